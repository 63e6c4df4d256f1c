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
];
