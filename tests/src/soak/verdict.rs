//! A criterion's result: PASS or FAIL with the figures that decided it.

/// One criterion checked.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: String,
    pub pass: bool,
    /// The figures and the rule, so a FAIL says why.
    pub detail: String,
}

impl Verdict {
    pub fn new(name: &str, pass: bool, detail: String) -> Self {
        Verdict {
            name: name.to_string(),
            pass,
            detail,
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
                if v.pass { "PASS" } else { "FAIL" },
                v.name,
                v.detail
            )
        })
        .collect()
}

/// Whether every criterion passed.
pub fn all_pass(verdicts: &[Verdict]) -> bool {
    verdicts.iter().all(|v| v.pass)
}
