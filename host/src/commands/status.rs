//! `persona-bus status`: event counts, handlers, and the transport.

use crate::commands::open_store;
use persona_bus::config::Config;

/// The running host's source status (written on each breaker transition).
pub(super) fn source_status(config: &Config) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(config.data_dir.join("control").join("source.json")).ok()?;
    serde_json::from_str(&text).ok()
}

pub(super) fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let counts = store.status_counts()?;
    let handlers = store.handler_records()?;
    let outbox = store.outbox_len()?;
    let size = store.size()?;
    let retention = &config.store.retention;
    let horizons = retention.horizons(
        std::time::SystemTime::now(),
        persona_bus::retention::redelivery_hours(&config.kafka),
    );
    let would_free = store.prunable(&horizons)?;
    // The plan's phase-1 connectivity check: does a broker answer?
    let kafka = if config.kafka.enabled {
        let k = &config.kafka;
        let wait = std::time::Duration::from_secs(3);
        let reached = persona_bus::kafka::probe(k, wait);
        let topics = [&k.topics.events.name, &k.topics.actions.name];
        let group = reached.is_ok().then(|| {
            persona_bus::kafka::admin::describe(k, &k.consumer_group, &[topics[0], topics[1]], wait)
                .map_err(|e| e.to_string())
        });
        serde_json::json!({
            "enabled": true,
            "brokers": k.brokers,
            "client_id": k.client_id,
            "dual_write": k.dual_write,
            "source": if k.consuming() { "kafka" } else { "sqlite (dual write)" },
            "reachable": reached.is_ok(),
            "error": reached.err().map(|e| e.to_string()),
            "outbox": outbox,
            "topics": k.topics.all().iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
            "group": match &group {
                Some(Ok(view)) => serde_json::to_value(view)?,
                Some(Err(e)) => serde_json::json!({ "name": k.consumer_group, "error": e }),
                None => serde_json::json!({ "name": k.consumer_group }),
            },
            "total_lag": group.as_ref().and_then(|g| g.as_ref().ok()).map(|v| v.total_lag()),
            "host": source_status(config),
        })
    } else {
        serde_json::json!({ "enabled": false, "outbox": outbox })
    };
    if json {
        let counts: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), (*n).into()))
            .collect();
        let store = serde_json::json!({
            "size": size,
            "retention": retention,
            "retention_would_delete": would_free,
        });
        let value = serde_json::json!({ "data_dir": config.data_dir, "events": counts, "handlers": handlers, "kafka": kafka, "store": store });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("data dir: {}", config.data_dir.display());
    match (kafka["enabled"].as_bool(), kafka["reachable"].as_bool()) {
        (Some(true), Some(true)) => println!(
            "kafka:    enabled, {} reachable; {outbox} events waiting in the outbox",
            config.kafka.brokers
        ),
        (Some(true), _) => println!(
            "kafka:    enabled, NOT reachable ({}); {outbox} events waiting in the outbox",
            kafka["error"].as_str().unwrap_or("?")
        ),
        _ if outbox > 0 => println!(
            "kafka:    disabled (embedded SQLite bus); {outbox} events from an earlier dual write wait in the outbox"
        ),
        _ => println!("kafka:    disabled (embedded SQLite bus)"),
    }
    if let Some(view) = kafka.get("group").filter(|g| g.get("members").is_some()) {
        println!(
            "group:    {} ({}), {} member(s), lag {}",
            view["group"].as_str().unwrap_or("?"),
            view["state"].as_str().unwrap_or("?"),
            view["members"].as_array().map_or(0, Vec::len),
            kafka["total_lag"]
        );
        for p in view["partitions"].as_array().into_iter().flatten() {
            println!(
                "          {}/{}: committed {}, end {}, lag {}, {}",
                p["topic"].as_str().unwrap_or("?"),
                p["partition"],
                p["committed"],
                p["end"],
                p["lag"],
                p["owner"]
                    .as_str()
                    .map_or("unassigned".into(), |o| format!("assigned to {o}"))
            );
        }
    }
    if let Some(host) = kafka.get("host").filter(|h| !h.is_null()) {
        println!(
            "source:   {} in charge (configured {}), breaker {}, {} transition(s){}",
            host["active"].as_str().unwrap_or("?"),
            host["configured"].as_str().unwrap_or("?"),
            host["breaker"].as_str().unwrap_or("?"),
            host["transitions"],
            host["last_transition"]["reason"]
                .as_str()
                .map_or(String::new(), |r| format!("; last: {r}"))
        );
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!(
        "events:   {}",
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    );
    let loaded = handlers.iter().filter(|h| h.status == "loaded").count();
    println!("handlers: {loaded} loaded of {} recorded", handlers.len());
    // Which version runs here, from where, signed by whom.
    for h in handlers.iter().filter(|h| h.status != "removed") {
        println!(
            "          {} {} {}: {}",
            h.name,
            h.version.as_deref().unwrap_or("-"),
            h.status,
            h.provenance()
        );
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "store:    {:.1} MiB (WAL {:.1} MiB, free inside {:.1} MiB{}); retention would delete {} events, {} execution rows, {} dead letters now",
        mib(size.file_bytes),
        mib(size.wal_bytes),
        mib(size.free_bytes),
        if size.gives_back {
            ""
        } else {
            ", kept: run `persona-bus store compact` once with the host stopped"
        },
        would_free.events,
        would_free.executions,
        would_free.dead_letters
    );
    Ok(())
}
