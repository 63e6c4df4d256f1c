//! A real three-broker cluster (`make kafka-up-cluster`, 127.0.0.1:9192-9194):
//! under a steady publisher the broker leading most of the events topic's
//! partitions is killed (-9) and restarted. A leader moving inside a healthy
//! cluster is not an outage: nothing is lost, nothing handled twice, and the
//! breaker stays closed.

use crate::consume::assert_each_once;
use persona_bus_tests::cluster::leader_kill;

#[test]
#[ignore = "needs services: make test"]
fn killing_the_events_leader_loses_nothing_and_handles_nothing_twice() {
    let run = leader_kill();
    println!("{}", run.line());
    let store = persona_bus::store::Store::open(&run.sandbox.data_dir()).unwrap();
    assert_each_once(&store, "slow", &run.published);
    assert_eq!(
        run.source.transitions, 0,
        "a leader moving is not an outage: {:?}",
        run.source.history
    );
    assert_eq!(run.source.active, "kafka");
}
