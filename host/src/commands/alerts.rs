//! `persona-bus alerts list`: the host's alerts and their webhook deliveries.

use crate::commands::open_store;
use clap::Subcommand;
use persona_bus::config::Config;

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Active alerts first, then recently resolved ones, with deliveries
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn alerts_list(config: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let listing = persona_bus::alerts::listing(&store, limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(());
    }
    let alerts = listing["alerts"].as_array().map_or(&[][..], Vec::as_slice);
    for a in alerts {
        let subject = a["subject"].as_str().unwrap_or("");
        println!(
            "{:<6} {:<9} {:<8} {}{}  since {}  {}",
            a["id"],
            a["status"].as_str().unwrap_or("?"),
            a["severity"].as_str().unwrap_or("?"),
            a["rule"].as_str().unwrap_or("?"),
            if subject.is_empty() {
                String::new()
            } else {
                format!(" [{subject}]")
            },
            a["since"].as_str().unwrap_or("?"),
            a["summary"].as_str().unwrap_or(""),
        );
    }
    let deliveries = listing["deliveries"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let waiting = deliveries
        .iter()
        .filter(|d| d["state"] == "retrying")
        .count();
    let failed = deliveries
        .iter()
        .filter(|d| d["state"] == "gave_up")
        .count();
    println!(
        "{} alerts ({} firing); {} deliveries ({waiting} retrying, {failed} given up)",
        alerts.len(),
        alerts.iter().filter(|a| a["status"] == "firing").count(),
        deliveries.len()
    );
    Ok(())
}
