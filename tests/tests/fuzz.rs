//! CI's run of the random-input driver (`weft-fuzz`): 20,000 mutated inputs
//! at every listener of a real control plane, an mTLS pair of sidecars and
//! a sidecar as the API gateway, then the same checks as the documented
//! run: no process died or panicked, no input hung past its timeout, memory
//! stayed within the bound, a normal call went through the pair and a REST
//! call through the gateway after every batch, and the caller's metrics
//! named only the mesh's services.

use std::time::Duration;

use weft_tests::fuzz::{Options, run};
use weft_tests::util::init_logs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_random_inputs_break_nothing() -> anyhow::Result<()> {
    init_logs();
    let inputs = 20_000;
    let report = run(Options {
        inputs,
        limit: Some(Duration::from_secs(120)),
        seed: 13,
        concurrency: 16,
        batch: 5_000,
        // Generous: CI machines are slow and shared; a hang is forever.
        timeout: Duration::from_secs(10),
    })
    .await?;
    println!("{}", report.table());
    let problems = report.problems();
    assert!(problems.is_empty(), "{problems:#?}\n{}", report.table());
    assert_eq!(
        report.inputs(),
        inputs,
        "the run stopped early:\n{}",
        report.table()
    );
    assert!(report.checks >= 4, "{}", report.table());
    // Every listener got its share and answered most of it somehow.
    for t in &report.targets {
        assert!(t.inputs > 0, "{} got no input", t.name);
        assert!(t.answered + t.resets == t.inputs, "{}: {t:?}", t.name);
        // Some HTTP/1 inputs are still requests a listener serves: the
        // code behind its parsers ran, not only their refusals.
        if let Some(ok) = t.ok_2xx {
            assert!(ok > 0, "{}: no input answered with a 2xx: {t:?}", t.name);
        }
    }
    Ok(())
}
