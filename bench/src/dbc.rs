//! `keyward-bench dbc`: see the issue for this part; not written yet.

use crate::harness::{BenchError, Plan, ResultLine};

pub async fn run(_plan: Plan) -> Result<ResultLine, BenchError> {
    Err(BenchError::Setup(
        "this part's benchmark is not written yet (see its open issue)".into(),
    ))
}
