//! Attacks, the algorithms: their settings and checks (`method.rs`, `eps.rs`),
//! the FGSM family (`family.rs`), APGD (`apgd.rs`), FAB-T (`fab.rs`), Square (`square.rs`),
//! cascades (`cascade.rs`),
//! `--minimal` (`minimal.rs`), and the per-batch plan that records any of them
//! into one submit (`batch_plan/`) with its outcome (`outcome.rs`). The jobs
//! that run them over folders and shards live in [`crate::run`]; nothing here
//! imports from there. See ARCHITECTURE.md.

pub mod apgd;
pub mod batch_plan;
pub mod cascade;
pub mod eps;
pub mod eval;
pub(crate) mod fab;
pub(crate) mod family;
pub mod method;
pub mod minimal;
pub mod outcome;
mod replay;
pub mod square;

pub use batch_plan::{AttackPlan, FgsmPlan};
pub use cascade::CascadePlan;
pub use eps::{parse_eps_list, parse_l2_eps_list, Eps};
pub use eval::EvalPlan;
pub use method::{AttackRequest, AttackSpec, Cascade, Method, Norm, METHOD_NAMES};
pub use outcome::{image_id, BatchOutcome, Pred, Target};
