//! A criterion's result: PASS or FAIL with the figures that decided it.

/// One criterion checked.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: String,
    pub pass: bool,
    /// False for a figure shown but not judged (printed `INFO`, never
    /// fails the run): see `Tolerances::judge_latency`.
    pub judged: bool,
    /// The figures and the rule, so a FAIL says why.
    pub detail: String,
}

impl Verdict {
    pub fn new(name: &str, pass: bool, detail: String) -> Self {
        Verdict {
            name: name.to_string(),
            pass,
            judged: true,
            detail,
        }
    }

    /// The same figures, shown but not judged.
    pub fn unjudged(self) -> Self {
        Verdict {
            judged: false,
            ..self
        }
    }
}

/// The verdicts as lines `PASS name: detail`.
pub fn render(verdicts: &[Verdict]) -> String {
    verdicts
        .iter()
        .map(|v| {
            format!(
                "{} {}: {}\n",
                match (v.judged, v.pass) {
                    (false, _) => "INFO",
                    (true, true) => "PASS",
                    (true, false) => "FAIL",
                },
                v.name,
                v.detail
            )
        })
        .collect()
}

/// Whether every judged criterion passed.
pub fn all_pass(verdicts: &[Verdict]) -> bool {
    verdicts.iter().all(|v| v.pass || !v.judged)
}
