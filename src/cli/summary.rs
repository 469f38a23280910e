//! The summary `advex attack` prints after a run.

/// The report's adapter, or its devices: `NAME`, `2 x NAME`, `A + B`.
pub(crate) fn adapters_of(r: &advex::report::Report) -> String {
    if r.devices.len() < 2 {
        return r.adapter.name.clone();
    }
    advex::gpu::devices_phrase(r.devices.iter().map(|d| d.name.as_str()))
}

pub(crate) fn print_attack_summary(r: &advex::report::Report) {
    println!(
        "{} on {} image{} ({}), {}: clean accuracy {:.4}",
        r.method.to_uppercase(),
        r.images,
        if r.images == 1 { "" } else { "s" },
        r.model.name,
        match r.devices.len() {
            0 | 1 => format!("adapter {}", r.adapter.name),
            n => format!("{n} devices ({})", adapters_of(r)),
        },
        r.clean.accuracy
    );
    let lost = r.epsilons.iter().any(|e| e.lost_to_rounding.is_some());
    let steps = r.epsilons.iter().any(|e| e.mean_steps_to_success.is_some())
        && r.method != "fgsm"
        && r.method != "fgm";
    println!(
        "{:>10} {:>9} {:>9} {:>10} {:>9} {:>9}{}{}",
        "eps",
        "accuracy",
        "success",
        "adv conf",
        "L-inf",
        "L2",
        if lost { "  lost to rounding" } else { "" },
        if steps { "  steps to success" } else { "" }
    );
    for e in &r.epsilons {
        println!(
            "{:>10} {:>9.4} {:>9.4} {:>10.4} {:>9.5} {:>9.4}{}{}",
            e.eps_text,
            e.accuracy,
            e.success_rate,
            e.mean_adv_confidence,
            e.mean_linf,
            e.mean_l2,
            match e.lost_to_rounding {
                Some(n) if lost => format!("{n:>18}"),
                _ => String::new(),
            },
            match e.mean_steps_to_success {
                Some(m) if steps => format!("{m:>18.2}"),
                _ => String::new(),
            }
        );
    }
    for e in &r.epsilons {
        if let Some(m) = &e.min_eps {
            let fooled: u64 = m.histogram.iter().sum();
            println!(
                "smallest fooling eps (--minimal, clean-correct images): median {}, {} fooled \
                 at or below {}, {} not",
                m.median_text.as_deref().unwrap_or("above the eps"),
                fooled,
                e.eps_text,
                m.not_fooled
            );
        }
    }
    if let Some(names) = &r.cascade {
        println!("robust accuracy after each attack of the cascade (the table is the worst case):");
        print!("{:>10}", "eps");
        for n in names {
            print!(" {n:>10}");
        }
        println!();
        for e in &r.epsilons {
            print!("{:>10}", e.eps_text);
            for a in e.robust_accuracy_after.iter().flatten() {
                print!(" {a:>10.4}");
            }
            println!();
        }
    }
    if !r.skipped.is_empty() {
        println!(
            "skipped {} unreadable images (listed in the report)",
            r.skipped.len()
        );
    }
    let rate = r.timing.images_per_second;
    if rate == 0.0 && r.images > 0 {
        // a rerun of a sharded run with nothing left: this process attacked none
        println!(
            "nothing left to attack: every shard was committed already ({:.2} s to check and merge)",
            r.timing.seconds
        );
        return;
    }
    // three significant figures below 1 image/s (APGD on a CPU adapter)
    let decimals = if rate >= 1.0 || rate == 0.0 {
        1
    } else {
        (2 - rate.log10().floor() as i32).clamp(1, 6) as usize
    };
    println!("{:.2} s, {rate:.decimals$} images/s", r.timing.seconds);
}

pub(crate) fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
