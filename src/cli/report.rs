//! The rotation report as `POST /v1/targets/{t}/rotate` with `"wait": true` sends it
//! (`targets::RotationReport`, serialised), read back by the CLI.

use serde::Deserialize;

/// One rotation's result and its step timings.
#[derive(Debug, Deserialize)]
pub struct ReportView {
    #[serde(flatten)]
    pub outcome: OutcomeView,
    #[serde(default)]
    pub steps: Vec<StepView>,
}

/// What the rotation did.
#[derive(Debug, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OutcomeView {
    Swapped { generation: u64 },
    Unchanged,
    Failed { step: String, error: String },
}

/// How long one step took, in milliseconds.
#[derive(Debug, Deserialize)]
pub struct StepView {
    pub step: String,
    pub duration: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_daemon_writes() {
        let failed: ReportView = serde_json::from_str(
            r#"{"rotation":3,"target":"t","trigger":"api","forced":true,"result":"failed",
                "step":"fetch","cause":"secret","error":"store down","steps":[],
                "started_at":"2026-12-01T00:00:00.000Z"}"#,
        )
        .unwrap();
        assert!(matches!(
            failed.outcome,
            OutcomeView::Failed { ref step, ref error, .. } if step == "fetch" && error == "store down"
        ));
        let swapped: ReportView = serde_json::from_str(
            r#"{"result":"swapped","generation":7,"steps":[{"step":"fetch","duration":1.5}]}"#,
        )
        .unwrap();
        assert!(matches!(
            swapped.outcome,
            OutcomeView::Swapped { generation: 7 }
        ));
        assert_eq!(swapped.steps[0].step, "fetch");
    }
}
