//! Attacks: the FGSM family and APGD on the GPU (one submit per batch), eps
//! sweeps, cascades and --minimal, and the attack/eval commands around them
//! (streaming, shards, several devices). See ARCHITECTURE.md.

pub mod apgd;
pub mod cascade;
pub mod devices;
pub mod eps;
pub mod eval;
pub(crate) mod family;
pub mod fgsm;
pub mod method;
pub mod minimal;
pub mod outcome;
mod replay;
pub mod run;
pub mod shards;
pub mod worker;

pub use cascade::CascadePlan;
pub use devices::{open_gpus, run_ordered, run_pipelined, DeviceOptions};
pub use eps::{parse_eps_list, parse_l2_eps_list, Eps};
pub use eval::EvalPlan;
pub use fgsm::{AttackPlan, FgsmPlan};
pub use method::{AttackRequest, AttackSpec, Cascade, Method, Norm, METHOD_NAMES};
pub use outcome::{image_id, BatchOutcome, Pred, Target};
pub use run::{run_attack, run_eval, RunOptions, TargetSpec};
pub use shards::{merge_run, write_merged, Manifest};
pub use worker::{resolve_worker, Worker};
