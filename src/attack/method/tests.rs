//! Tests of the attack settings and their checks.

use super::*;

fn eps() -> Vec<Eps> {
    super::super::parse_eps_list("8/255").unwrap()
}

fn resolve(r: AttackRequest) -> Result<AttackSpec> {
    AttackSpec::resolve(&r, &eps(), true, Target::Untargeted)
}

fn req(method: &str) -> AttackRequest {
    AttackRequest {
        method: Some(method.into()),
        ..Default::default()
    }
}

#[test]
fn defaults_follow_the_papers() {
    let pgd = resolve(req("pgd")).unwrap();
    assert_eq!((pgd.steps, pgd.random_start, pgd.restarts), (10, true, 1));
    assert!((pgd.step_for(8.0 / 255.0) - 2.5 * 8.0 / 255.0 / 10.0).abs() < 1e-12);
    let bim = resolve(req("bim")).unwrap();
    assert!(!bim.random_start);
    let mi = resolve(req("mifgsm")).unwrap();
    assert_eq!(mi.decay, 1.0);
    assert!((mi.step_for(0.1) - 0.01).abs() < 1e-12);
    let ap = resolve(req("apgd-t")).unwrap();
    assert_eq!((ap.steps, ap.random_start, ap.restarts), (100, true, 1));
    assert_eq!(ap.apgd_targets(10), (9, false));
    assert_eq!(ap.apgd_targets(5), (4, true));
    assert!((ap.step_for(0.1) - 0.2).abs() < 1e-12);
    let mut small = ap.clone();
    assert!(small
        .fit_to_model(6)
        .unwrap()
        .unwrap()
        .contains("5 target runs"));
    assert_eq!(small.targets, 5);
    assert!(small
        .fit_to_model(3)
        .unwrap_err()
        .to_string()
        .contains("at least 4"));
    let f = resolve(req("fgsm")).unwrap();
    assert_eq!(f.steps, 1);
    assert_eq!(f.step_for(0.1), 0.1);
    let a = resolve(AttackRequest {
        step_size: Some("1/255".into()),
        steps: Some(20),
        ..req("bim")
    })
    .unwrap();
    assert!((a.step_for(0.5) - 1.0 / 255.0).abs() < 1e-12);
    assert_eq!(a.steps, 20);
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    let err = |r: AttackRequest| resolve(r).unwrap_err().to_string();
    assert!(err(AttackRequest {
        steps: Some(0),
        ..req("bim")
    })
    .contains("at least 1"));
    assert!(err(AttackRequest {
        step_size: Some("-0.1".into()),
        ..req("pgd")
    })
    .contains("--step-size"));
    assert!(err(AttackRequest {
        step_size: Some("inf".into()),
        ..req("pgd")
    })
    .contains("--step-size"));
    assert!(err(AttackRequest {
        restarts: Some(0),
        ..req("pgd")
    })
    .contains("at least 1"));
    assert!(err(AttackRequest {
        restarts: Some(3),
        ..req("bim")
    })
    .contains("pgd"));
    assert!(err(AttackRequest {
        norm: Some("l2".into()),
        ..req("fgsm")
    })
    .contains("fgm"));
    assert!(err(AttackRequest {
        norm: Some("l2".into()),
        ..req("mifgsm")
    })
    .contains("fgm, bim, pgd, apgd-*, fab-t and square"));
    assert!(err(AttackRequest {
        step_size: Some("2/255".into()),
        ..req("square")
    })
    .contains("square"));
    assert!(err(AttackRequest {
        step_size: Some("2/255".into()),
        ..req("fab-t")
    })
    .contains("fab-t"));
    assert!(err(AttackRequest {
        restarts: Some(2),
        ..req("square")
    })
    .contains("pgd and apgd"));
    let l2 = resolve(AttackRequest {
        norm: Some("l2".into()),
        ..req("pgd")
    })
    .unwrap();
    assert_eq!(l2.norm, Norm::L2);
    assert!(l2.settings().contains(&"norm=l2".to_string()));
    assert!(err(AttackRequest {
        norm: Some("l3".into()),
        ..req("pgd")
    })
    .contains("linf or l2"));
    assert!(err(AttackRequest {
        steps: Some(5),
        ..req("fgsm")
    })
    .contains("iterative"));
    assert!(err(AttackRequest {
        random_start: Some(true),
        ..req("bim")
    })
    .contains("pgd"));
    assert!(err(AttackRequest {
        decay: Some(0.5),
        ..req("pgd")
    })
    .contains("mifgsm"));
    assert!(err(AttackRequest {
        decay: Some(f64::NAN),
        ..req("mifgsm")
    })
    .contains("finite"));
    assert!(err(req("deepfool")).contains("unknown method"));
    assert!(err(AttackRequest {
        step_size: Some("1/255".into()),
        ..req("apgd-ce")
    })
    .contains("adapts"));
    let dlr_t = AttackSpec::resolve(&req("apgd-dlr"), &eps(), true, Target::Class(3));
    assert!(dlr_t.unwrap_err().to_string().contains("apgd-t"));
    let fab_t = AttackSpec::resolve(&req("fab-t"), &eps(), true, Target::Class(3));
    assert!(fab_t.unwrap_err().to_string().contains("apgd-t --target"));
    let fab = AttackSpec::resolve(&req("fab-t"), &eps(), true, Target::Untargeted).unwrap();
    assert_eq!((fab.steps, fab.targets), (100, 9));
    assert!(fab.settings().iter().any(|s| s == "eta=1.05"));
    let sq = AttackSpec::resolve(&req("square"), &eps(), true, Target::Untargeted).unwrap();
    assert_eq!(sq.steps, 5000);
    assert!(sq.settings().iter().any(|s| s == "queries=5000"));
    let several = AttackSpec::resolve(
        &AttackRequest {
            minimal: true,
            ..req("fgsm")
        },
        &super::super::parse_eps_list("1/255,2/255").unwrap(),
        true,
        Target::Untargeted,
    );
    assert!(several.unwrap_err().to_string().contains("only the"));
    let off_grid = AttackSpec::resolve(
        &AttackRequest {
            minimal: true,
            ..req("bim")
        },
        &super::super::parse_eps_list("0.1").unwrap(),
        true,
        Target::Untargeted,
    );
    assert!(off_grid.unwrap_err().to_string().contains("8-bit grid"));
    let cascade = |m: &str, r: AttackRequest| {
        Cascade::resolve(
            &AttackRequest {
                method: Some(m.into()),
                ..r
            },
            &eps(),
            true,
            Target::Untargeted,
        )
    };
    let c = cascade("apgd-ce, apgd-t", AttackRequest::default()).unwrap();
    assert_eq!(c.name(), "apgd-ce,apgd-t");
    assert_eq!(c.stages[1].steps, 100);
    assert!(c.settings().iter().any(|s| s == "apgd-t:targets=9"));
    let e = cascade(
        "bim,apgd-ce",
        AttackRequest {
            step_size: Some("1/255".into()),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("adapts") && e.contains("cascade bim,apgd-ce"),
        "{e}"
    );
    assert!(cascade("pgd,,bim", AttackRequest::default())
        .unwrap_err()
        .to_string()
        .contains("empty name"));
    // allowed: pgd without its random start, fgm with its own norm
    assert!(
        !resolve(AttackRequest {
            random_start: Some(false),
            ..req("pgd")
        })
        .unwrap()
        .random_start
    );
    assert!(resolve(AttackRequest {
        norm: Some("l2".into()),
        ..req("fgm")
    })
    .is_ok());
}

#[test]
fn autoattack_is_the_standard_cascade_with_the_reference_settings() {
    let r = |extra: AttackRequest| Cascade::resolve(&extra, &eps(), true, Target::Untargeted);
    let c = r(req("autoattack")).unwrap();
    assert_eq!(c.name(), "apgd-ce,apgd-t,fab-t,square");
    let steps: Vec<u32> = c.stages.iter().map(|s| s.steps).collect();
    assert_eq!(steps, vec![100, 100, 100, 5000]);
    assert_eq!(c.stages[1].targets, 9);
    assert_eq!(c.stages[2].targets, 9);
    assert_eq!(c.stages[0].restarts, 1);
    assert!(c.stages[0].random_start);
    let e = |x: AttackRequest| r(x).unwrap_err().to_string();
    assert!(e(AttackRequest {
        steps: Some(10),
        ..req("autoattack")
    })
    .contains("list the attacks"));
    let l2 = r(AttackRequest {
        norm: Some("l2".into()),
        ..req("autoattack")
    })
    .unwrap();
    assert!(l2.stages.iter().all(|s| s.norm == Norm::L2));
    assert_eq!(l2.name(), "apgd-ce,apgd-t,fab-t,square");
    assert!(e(req("apgd-ce,autoattack")).contains("give it alone"));
    let t = Cascade::resolve(&req("AutoAttack"), &eps(), true, Target::Class(2));
    assert!(t.unwrap_err().to_string().contains("untargeted"));
}
