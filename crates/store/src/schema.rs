//! Versioned schema migrations, applied in order at open.
//!
//! `PRAGMA user_version` records how many have run. Migrations are only ever
//! appended: a released one is never edited.

/// The migrations, oldest first.
pub const MIGRATIONS: &[&str] = &[
    // 1: the original bus's two tables (compatible columns and indexes), plus
    //    what the new bus needs: scheduling columns, executions, the processed
    //    ledger, dead letters, handler state and the handler registry.
    r#"
    CREATE TABLE persona_events (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL DEFAULT 'default',
        event_type TEXT NOT NULL,
        source_type TEXT NOT NULL,
        source_id TEXT,
        target_persona_id TEXT,
        payload TEXT,
        status TEXT NOT NULL DEFAULT 'pending',
        error_message TEXT,
        processed_at TEXT,
        created_at TEXT NOT NULL,
        -- added by persona-bus
        headers TEXT NOT NULL DEFAULT '[]',
        schema_version INTEGER NOT NULL DEFAULT 1,
        chain_depth INTEGER NOT NULL DEFAULT 0,
        retry_count INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,  -- ms since epoch
        claimed_at INTEGER,                          -- ms since epoch
        claims INTEGER NOT NULL DEFAULT 0            -- times claimed: >1 means look at the ledger
    );
    -- The original indexed status, project_id, event_type, target_persona_id
    -- and created_at. Each index is another page written per insert and per
    -- status change; measured here, they cut insert throughput by more than
    -- half. Only what a query uses is kept: status only where the poller
    -- looks (pending/processing rows), and event_type for filtered listing.
    -- Listing newest-first uses rowid (arrival order) instead of an index on
    -- created_at; project_id and target_persona_id were never queried.
    CREATE INDEX idx_persona_events_status ON persona_events(status) WHERE status IN ('pending', 'processing');
    CREATE INDEX idx_persona_events_type ON persona_events(event_type);

    CREATE TABLE persona_event_subscriptions (
        id TEXT PRIMARY KEY,
        persona_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        source_filter TEXT,
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        -- added by persona-bus
        project_id TEXT,
        managed_by TEXT NOT NULL DEFAULT 'api'
    );
    CREATE INDEX idx_persona_subs_persona ON persona_event_subscriptions(persona_id);
    CREATE INDEX idx_persona_subs_type ON persona_event_subscriptions(event_type);
    CREATE INDEX idx_persona_subs_enabled ON persona_event_subscriptions(enabled);

    -- One row per handler run.
    CREATE TABLE persona_executions (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        handler TEXT NOT NULL,
        handler_version TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        duration_us INTEGER NOT NULL,
        error TEXT,
        started_at TEXT NOT NULL
    );
    CREATE INDEX idx_persona_executions_event ON persona_executions(event_id);

    -- The processed ledger: one row per (event, handler) that is finished
    -- (completed or dead-lettered). A handler never runs on an event that has
    -- a row here, whichever path delivered it.
    CREATE TABLE persona_processed (
        event_id TEXT NOT NULL,
        handler TEXT NOT NULL,
        outcome TEXT NOT NULL,
        processed_at TEXT NOT NULL,
        PRIMARY KEY (event_id, handler)
    ) WITHOUT ROWID;

    CREATE TABLE persona_dead_letters (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        handler TEXT NOT NULL,
        handler_version TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        last_error TEXT NOT NULL,
        headers TEXT NOT NULL,
        created_at TEXT NOT NULL,
        retried_at TEXT
    );
    CREATE INDEX idx_persona_dead_letters_event ON persona_dead_letters(event_id);

    CREATE TABLE persona_handler_state (
        handler TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (handler, key)
    ) WITHOUT ROWID;

    -- What the running host loaded, for `handlers list` from another process.
    CREATE TABLE persona_handlers (
        name TEXT PRIMARY KEY,
        version TEXT,
        status TEXT NOT NULL,
        error TEXT,
        manifest_path TEXT NOT NULL,
        digest TEXT,
        updated_at TEXT NOT NULL
    );
    "#,
    // 2: the Kafka outbox (plan phase 1, dual write). `kafka_state` is NULL
    //    for events that are not for Kafka, 'pending' until the broker has
    //    acknowledged the event, then 'sent'. Only pending rows are indexed.
    r#"
    ALTER TABLE persona_events ADD COLUMN kafka_state TEXT;
    CREATE INDEX idx_persona_events_outbox ON persona_events(kafka_state) WHERE kafka_state = 'pending';
    "#,
    // 3: a layout whose cost does not depend on the shape of event ids.
    //    Producers mostly send random UUIDs, and every B-tree keyed by one
    //    takes each insert on a random page: with three of them (the events'
    //    id, the ledger's key, the executions' event_id index) a batch
    //    rewrote most of each tree to the WAL and throughput halved. Now an
    //    integer `seq` (arrival order) is the events' key, the id lives in
    //    exactly one unique index, and the ledger and executions refer to
    //    (seq, handler number): they only ever append.
    //
    //    - persona_events is rebuilt with `seq INTEGER PRIMARY KEY` (the old
    //      rowid, so arrival order is kept; a rowid alone could be renumbered
    //      by VACUUM). Its columns keep their names and order; seq is last.
    //    - persona_handler_names numbers handlers.
    //    - persona_ledger and persona_runs replace persona_processed and
    //      persona_executions; views of those names keep the old columns
    //      queryable.
    //    Ledger or execution rows whose event row is missing (never written
    //    by this bus, but a hand-edited file may have them) get a stub event
    //    row, so nothing is dropped.
    r#"
    CREATE TABLE persona_events_v3 (
        id TEXT NOT NULL,
        project_id TEXT NOT NULL DEFAULT 'default',
        event_type TEXT NOT NULL,
        source_type TEXT NOT NULL,
        source_id TEXT,
        target_persona_id TEXT,
        payload TEXT,
        status TEXT NOT NULL DEFAULT 'pending',
        error_message TEXT,
        processed_at TEXT,
        created_at TEXT NOT NULL,
        headers TEXT NOT NULL DEFAULT '[]',
        schema_version INTEGER NOT NULL DEFAULT 1,
        chain_depth INTEGER NOT NULL DEFAULT 0,
        retry_count INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,
        claimed_at INTEGER,
        claims INTEGER NOT NULL DEFAULT 0,
        kafka_state TEXT,
        seq INTEGER PRIMARY KEY
    );
    INSERT INTO persona_events_v3 (seq, id, project_id, event_type, source_type, source_id, target_persona_id,
        payload, status, error_message, processed_at, created_at, headers, schema_version, chain_depth,
        retry_count, next_attempt_at, claimed_at, claims, kafka_state)
    SELECT rowid, id, project_id, event_type, source_type, source_id, target_persona_id,
        payload, status, error_message, processed_at, created_at, headers, schema_version, chain_depth,
        retry_count, next_attempt_at, claimed_at, claims, kafka_state
    FROM persona_events WHERE id IS NOT NULL ORDER BY rowid;
    INSERT INTO persona_events_v3 (id, event_type, source_type, status, processed_at, created_at)
    SELECT event_id, '(unknown)', '(unknown)', 'completed', min(at), min(at) FROM (
        SELECT event_id, processed_at AS at FROM persona_processed
        UNION ALL SELECT event_id, started_at FROM persona_executions
    ) WHERE event_id NOT IN (SELECT id FROM persona_events_v3) GROUP BY event_id;
    DROP TABLE persona_events;
    ALTER TABLE persona_events_v3 RENAME TO persona_events;
    CREATE UNIQUE INDEX idx_persona_events_id ON persona_events(id);
    CREATE INDEX idx_persona_events_status ON persona_events(status) WHERE status IN ('pending', 'processing');
    CREATE INDEX idx_persona_events_type ON persona_events(event_type);
    CREATE INDEX idx_persona_events_outbox ON persona_events(kafka_state) WHERE kafka_state = 'pending';

    CREATE TABLE persona_handler_names (
        no INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    INSERT INTO persona_handler_names (name)
    SELECT handler FROM persona_processed UNION SELECT handler FROM persona_executions;

    -- One row per (event, handler) that is finished (completed or
    -- dead-lettered): that handler never runs on that event again.
    CREATE TABLE persona_ledger (
        event_seq INTEGER NOT NULL,
        handler_no INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        processed_at INTEGER NOT NULL,  -- ms since epoch
        PRIMARY KEY (event_seq, handler_no)
    ) WITHOUT ROWID;
    INSERT INTO persona_ledger (event_seq, handler_no, outcome, processed_at)
    SELECT e.seq, h.no, p.outcome, CAST(round((julianday(p.processed_at) - 2440587.5) * 86400000.0) AS INTEGER)
    FROM persona_processed p
    JOIN persona_events e ON e.id = p.event_id
    JOIN persona_handler_names h ON h.name = p.handler;

    -- One row per handler run.
    CREATE TABLE persona_runs (
        id INTEGER PRIMARY KEY,
        event_seq INTEGER NOT NULL,
        handler_no INTEGER NOT NULL,
        handler_version TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        duration_us INTEGER NOT NULL,
        error TEXT,
        started_at TEXT NOT NULL
    );
    INSERT INTO persona_runs (id, event_seq, handler_no, handler_version, attempt, outcome, duration_us, error, started_at)
    SELECT x.id, e.seq, h.no, x.handler_version, x.attempt, x.outcome, x.duration_us, x.error, x.started_at
    FROM persona_executions x
    JOIN persona_events e ON e.id = x.event_id
    JOIN persona_handler_names h ON h.name = x.handler
    ORDER BY x.id;
    CREATE INDEX idx_persona_runs_event ON persona_runs(event_seq);

    DROP TABLE persona_processed;
    DROP TABLE persona_executions;
    CREATE VIEW persona_processed AS
    SELECT e.id AS event_id, h.name AS handler, l.outcome AS outcome,
           strftime('%Y-%m-%dT%H:%M:%fZ', l.processed_at / 1000.0, 'unixepoch') AS processed_at
    FROM persona_ledger l
    JOIN persona_events e ON e.seq = l.event_seq
    JOIN persona_handler_names h ON h.no = l.handler_no;
    CREATE VIEW persona_executions AS
    SELECT r.id AS id, e.id AS event_id, h.name AS handler, r.handler_version AS handler_version,
           r.attempt AS attempt, r.outcome AS outcome, r.duration_us AS duration_us, r.error AS error,
           r.started_at AS started_at
    FROM persona_runs r
    JOIN persona_events e ON e.seq = r.event_seq
    JOIN persona_handler_names h ON h.no = r.handler_no;
    "#,
    // 4: the event id leaves the events table's own index for
    //    `persona_event_ids`, which is written in sorted runs: the ids of
    //    events after `persona_id_merge.merged_through` are kept in memory
    //    and merged later (see `store::ids`). Dead letters refer to their
    //    event by seq too, so listing them needs no id lookup.
    r#"
    ALTER TABLE persona_dead_letters ADD COLUMN event_seq INTEGER;
    UPDATE persona_dead_letters
    SET event_seq = (SELECT e.seq FROM persona_events e WHERE e.id = persona_dead_letters.event_id);
    CREATE TABLE persona_event_ids (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO persona_event_ids (id, seq) SELECT id, seq FROM persona_events ORDER BY id;
    CREATE TABLE persona_id_merge (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        merged_through INTEGER NOT NULL
    );
    INSERT INTO persona_id_merge (one, merged_through)
    SELECT 1, coalesce(max(seq), 0) FROM persona_events;
    DROP INDEX idx_persona_events_id;
    "#,
    // 5: the host's own alerts (`crate::alerts`): one row per alert
    //    (rule + subject, from pending to resolved) and the webhook
    //    deliveries that announce them, written in the same transaction.
    r#"
    CREATE TABLE persona_alerts (
        id INTEGER PRIMARY KEY,
        rule TEXT NOT NULL,
        subject TEXT NOT NULL,
        signal TEXT NOT NULL,
        severity TEXT NOT NULL,
        state TEXT NOT NULL,            -- pending | firing | resolved
        value REAL NOT NULL,
        threshold REAL NOT NULL,
        summary TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        fired_at_ms INTEGER,
        resolved_at_ms INTEGER,
        updated_at_ms INTEGER NOT NULL
    );
    CREATE INDEX idx_persona_alerts_active ON persona_alerts(state) WHERE state != 'resolved';
    CREATE TABLE persona_alert_deliveries (
        id INTEGER PRIMARY KEY,
        alert_id INTEGER NOT NULL,
        status TEXT NOT NULL,           -- what it announces: firing | resolved
        url TEXT NOT NULL,
        body TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_at_ms INTEGER,             -- NULL once delivered or given up
        delivered_at_ms INTEGER,
        last_error TEXT,
        created_at_ms INTEGER NOT NULL
    );
    CREATE INDEX idx_persona_alert_deliveries_due ON persona_alert_deliveries(next_at_ms)
        WHERE next_at_ms IS NOT NULL;
    "#,
    // 6: the event-type index goes. No query uses it (listing by type reads
    //    newest-first by seq and filters; its counts scan the table either
    //    way, as EXPLAIN QUERY PLAN shows), yet every publish wrote one more
    //    b-tree page to the WAL for it: a sixth of a one-event transaction.
    r#"
    DROP INDEX IF EXISTS idx_persona_events_type;
    "#,
    // 7: retention (`store::retention`) keeps an event while a dead letter
    //    refers to it; this index answers that per event.
    r#"
    CREATE INDEX idx_persona_dead_letters_seq ON persona_dead_letters(event_seq);
    "#,
    // 8: which version of the WIT contract each handler's component speaks
    //    (`0.1.0`, `0.2.0`, `0.2.0+batch`), for `handlers list`.
    r#"
    ALTER TABLE persona_handlers ADD COLUMN contract TEXT;
    "#,
    // 9: changing a handler without fear. Canaries rolled back (kept until
    //    the component changes), what shadows did beside their live
    //    versions (tallies, and the events where they differed), and
    //    replays of one handler with their progress.
    r#"
    CREATE TABLE persona_rollbacks (
        handler TEXT NOT NULL,
        digest TEXT NOT NULL,
        version TEXT NOT NULL,
        reason TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (handler, digest)
    ) WITHOUT ROWID;
    CREATE TABLE persona_shadow_tallies (
        handler TEXT NOT NULL,
        shadow_version TEXT NOT NULL,
        live_version TEXT NOT NULL,
        agreed INTEGER NOT NULL DEFAULT 0,
        differed INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0,
        first_at TEXT NOT NULL,
        last_at TEXT NOT NULL,
        PRIMARY KEY (handler, shadow_version, live_version)
    ) WITHOUT ROWID;
    CREATE TABLE persona_shadow_diffs (
        id INTEGER PRIMARY KEY,
        handler TEXT NOT NULL,
        shadow_version TEXT NOT NULL,
        live_version TEXT NOT NULL,
        event_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        differs TEXT NOT NULL,      -- outcome,state,published
        live TEXT NOT NULL,         -- JSON: outcome, state writes, published
        shadow TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX idx_persona_shadow_diffs_handler ON persona_shadow_diffs(handler, shadow_version, id);
    CREATE TABLE persona_replays (
        id INTEGER PRIMARY KEY,
        handler TEXT NOT NULL,
        source TEXT NOT NULL,       -- sqlite or kafka
        from_spec TEXT NOT NULL,
        to_spec TEXT,
        project TEXT,
        status TEXT NOT NULL,       -- running, finished, failed
        total INTEGER,
        done INTEGER NOT NULL DEFAULT 0,
        completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        finished_at TEXT
    );
    "#,
    // 10: handlers from OCI registries, and trust. Where each handler's
    //     component came from (`file` or the OCI reference it resolved),
    //     who signed it and when it was loaded; and events that wait for a
    //     handler refused by `[trust]` or not yet pulled (`waiting = 1`):
    //     pending without an attempt counted, claimable whatever their
    //     Kafka state, and woken when a handler loads.
    r#"
    ALTER TABLE persona_handlers ADD COLUMN source TEXT;
    ALTER TABLE persona_handlers ADD COLUMN signer TEXT;
    ALTER TABLE persona_handlers ADD COLUMN loaded_at TEXT;
    ALTER TABLE persona_events ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
    "#,
];
