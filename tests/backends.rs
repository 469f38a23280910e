//! Every shader on every backend, without a GPU: each `shaders/*.wgsl` is
//! parsed and validated by naga (the compiler inside wgpu) for both storage
//! types (`st` = f32, and f16 with `enable f16`), and each entry point, with
//! its pipeline constants at their defaults and at every value the host sets
//! (one constant at a time), is translated to SPIR-V (Vulkan), MSL (Metal) and
//! HLSL (DX12), and the SPIR-V checked by `spirv-val` where SPIRV-Tools is
//! installed. A shader that only compiles on the CI's Vulkan would fail here.

use std::path::Path;

use naga::back::{hlsl, msl, spv, PipelineConstants};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::ShaderStage;

/// The values the host gives each pipeline constant (besides the default).
fn values(name: &str) -> &'static [f64] {
    match name {
        "ACT" => &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "STEP" => &[0.0, 1.0, 2.0],
        "MODE" => &[0.0, 1.0, 2.0],
        "OP" => &[0.0, 1.0],
        "WG_M" => &[16.0, 64.0],
        "TM" | "TN" => &[4.0, 8.0],
        "BK" => &[8.0, 16.0],
        // workgroup array lengths (vec4s): the smallest and largest tiles'
        "A_LEN" => &[256.0, 1024.0],
        "B_LEN" => &[40.0, 544.0],
        "WG" => &[64.0, 128.0, 256.0],
        "WG_IMAGES" => &[32.0, 64.0],
        "KH" | "KW" => &[1.0, 3.0, 5.0, 7.0],
        "SH" | "SW" => &[1.0, 2.0, 3.0],
        "PAD_T" | "PAD_L" => &[0.0, 1.0, 2.0],
        "WMOD" => &[0.0, 1.0, 2.0, 3.0],
        "ITEM" => &[784.0, 150528.0],
        // booleans
        _ => &[0.0, 1.0],
    }
}

/// (name, enables, source) of every module the host compiles; every file in
/// shaders/ (and its family folders) is part of one.
fn shaders() -> Vec<(String, String, String)> {
    let modules = advex::gpu::shader_modules();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files = Vec::new();
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "wgsl") {
                files.push(p);
            }
        }
    }
    assert!(
        files.len() > 10,
        "shaders/ holds only {} .wgsl files",
        files.len()
    );
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            modules.iter().any(|(_, _, src)| src.contains(text.trim())),
            "{} is in no module of advex::gpu::Shader: add it to Shader::source",
            p.display()
        );
    }
    modules
        .into_iter()
        .map(|(n, e, s)| (n.to_string(), e.to_string(), s.to_string()))
        .collect()
}

/// The storage-type prelude after a module's enables (`enable f16` once).
fn prelude(enables: &str, f16: bool) -> String {
    let alias = match (f16, enables.contains("enable f16;")) {
        (false, _) => "alias st = f32;\n",
        (true, true) => "alias st = f16;\n",
        (true, false) => "enable f16;\nalias st = f16;\n",
    };
    format!("{enables}{alias}")
}

/// Translate one specialisation of one entry point to the three backends
/// (`coop`: SPIR-V only, the one backend wgpu's cooperative matrices of
/// 16 x 16 reach).
#[allow(clippy::too_many_arguments)]
fn translate(
    what: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
    constants: &PipelineConstants,
    f16: bool,
    coop: bool,
    spirv_val: Option<&Path>,
) {
    let ep = Some((ShaderStage::Compute, entry));
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(module, info, ep, constants)
            .unwrap_or_else(|e| panic!("{what}: pipeline constants: {e:?}"));
    let spv_options = spv::Options {
        // cooperative matrices (SPV_KHR_cooperative_matrix) need SPIR-V 1.6's
        // Vulkan 1.3 environment, as wgpu asks for on such devices
        lang_version: if coop { (1, 6) } else { (1, 0) },
        ..Default::default()
    };
    let words = spv::write_vec(
        &module,
        &info,
        &spv_options,
        Some(&spv::PipelineOptions {
            shader_stage: ShaderStage::Compute,
            entry_point: entry.into(),
        }),
    )
    .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
    if let Some(dir) = spirv_val {
        let file = dir.join("shader.spv");
        std::fs::write(&file, bytemuck::cast_slice(&words)).unwrap();
        let out = std::process::Command::new("spirv-val")
            .args(["--target-env", if coop { "vulkan1.3" } else { "vulkan1.1" }])
            .arg(&file)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // SPIRV-Tools before 2023.4 (Debian 12's) does not know
        // SPV_KHR_cooperative_matrix (capability 6022): naga's own validation
        // above is then all there is
        if coop && said.contains("Invalid capability operand: 6022") {
            return;
        }
        assert!(
            out.status.success(),
            "{what}: spirv-val: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if coop {
        return;
    }
    let msl_options = msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    msl::write_string(
        &module,
        &info,
        &msl_options,
        &msl::PipelineOptions {
            entry_point: Some((ShaderStage::Compute, entry.into())),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{what}: MSL: {e}"));
    let hlsl_options = hlsl::Options {
        shader_model: if f16 {
            hlsl::ShaderModel::V6_2
        } else {
            hlsl::ShaderModel::V5_1
        },
        ..Default::default()
    };
    let pipeline = hlsl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, entry.into())),
    };
    let mut text = String::new();
    hlsl::Writer::new(&mut text, &hlsl_options, &pipeline)
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{what}: HLSL: {e}"));
}

/// A scratch folder when SPIRV-Tools' validator is installed (tools/test.sh
/// installs it where it can): the SPIR-V is then validated too.
fn spirv_val_dir() -> Option<tempfile::TempDir> {
    let found = std::process::Command::new("spirv-val")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "spirv-val not found: SPIR-V translated, not validated (apt-get install spirv-tools)"
        );
    }
    found.then(|| tempfile::tempdir().unwrap())
}

#[test]
fn every_shader_translates_to_spirv_msl_and_hlsl() {
    let mut translated = 0;
    let val = spirv_val_dir();
    for (name, enables, source) in shaders() {
        let coop = enables.contains("wgpu_cooperative_matrix");
        for f16 in [false, true] {
            let prelude = prelude(&enables, f16);
            let what = format!("{name}.wgsl ({})", if f16 { "f16" } else { "f32" });
            let module = naga::front::wgsl::parse_str(&format!("{prelude}{source}"))
                .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&source)));
            let mut caps = if f16 || enables.contains("enable f16;") {
                Capabilities::SHADER_FLOAT16
            } else {
                Capabilities::empty()
            };
            if coop {
                caps |= Capabilities::COOPERATIVE_MATRIX
                    | Capabilities::SUBGROUP
                    | Capabilities::SHADER_FLOAT16;
            }
            let info = Validator::new(ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{what}: validation: {e:?}"));
            let overrides: Vec<String> = module
                .overrides
                .iter()
                .filter_map(|(_, o)| o.name.clone())
                .collect();
            // Constants without a default in WGSL (the host always sets them,
            // workgroup sizes): their largest value in every set.
            let required: PipelineConstants = module
                .overrides
                .iter()
                .filter(|(_, o)| o.init.is_none())
                .filter_map(|(_, o)| o.name.clone())
                .map(|n| {
                    let v = *values(&n).last().unwrap();
                    (n, v)
                })
                .collect();
            for ep in &module.entry_points {
                let entry = ep.name.as_str();
                // defaults, then each constant at each of its values
                let mut sets = vec![required.clone()];
                for o in &overrides {
                    for &v in values(o) {
                        let mut c = required.clone();
                        c.insert(o.clone(), v);
                        sets.push(c);
                    }
                }
                for c in &sets {
                    translate(
                        &format!("{what} {entry} {c:?}"),
                        &module,
                        &info,
                        entry,
                        c,
                        f16,
                        coop,
                        val.as_ref().map(|d| d.path()),
                    );
                    translated += 1;
                }
            }
        }
    }
    eprintln!(
        "{translated} specialisations translated to SPIR-V ({}), MSL and HLSL",
        if val.is_some() {
            "validated"
        } else {
            "not validated"
        }
    );
    assert!(
        translated > 100,
        "only {translated} specialisations translated"
    );
}

/// Every uniform struct the host writes has the size (rounded up to 16 bytes)
/// and field offsets of its WGSL twin (named fields by name), and
/// every uniform a shader declares has a Rust twin.
#[test]
fn uniform_structs_match_their_wgsl_twins() {
    let modules: std::collections::HashMap<String, naga::Module> = shaders()
        .into_iter()
        .map(|(name, enables, src)| {
            let text = format!("{}{src}", prelude(&enables, false));
            let m = naga::front::wgsl::parse_str(&text)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&text)));
            (name, m)
        })
        .collect();
    let layouts = advex::gpu::uniform_layouts();
    let mut problems: Vec<String> = Vec::new();
    for l in &layouts {
        let what = format!("{}.wgsl struct {}", l.module, l.wgsl);
        let m = modules
            .get(l.module)
            .unwrap_or_else(|| panic!("{what}: no such module"));
        let ty = m
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(l.wgsl))
            .unwrap_or_else(|| panic!("{what}: not found"))
            .1;
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{what}: not a struct");
        };
        // the host pads uniforms to whole 16-byte rows
        if (*span as usize).div_ceil(16) * 16 != l.size {
            problems.push(format!("{what}: WGSL size {span}, Rust {}", l.size));
        }
        for (name, off) in &l.fields {
            match members.iter().find(|m| m.name.as_deref() == Some(*name)) {
                None => problems.push(format!("{what}: no field {name} (Rust has it at {off})")),
                Some(m) if m.offset as usize != *off => problems.push(format!(
                    "{what}.{name}: WGSL offset {}, Rust {off}",
                    m.offset
                )),
                Some(_) => {}
            }
        }
        for member in members {
            let name = member.name.as_deref().unwrap_or("");
            if !(name.starts_with('_') || l.fields.iter().any(|(f, _)| *f == name)) {
                problems.push(format!("{what}: field {name} has no Rust twin"));
            }
        }
    }
    // every uniform of every module is covered (the scalar conv layout shares
    // the vec4 one's structs)
    for (name, m) in &modules {
        let owner = if name == "conv_direct_scalar" {
            "conv_direct_vec4"
        } else {
            name
        };
        for (_, g) in m.global_variables.iter() {
            if g.space != naga::AddressSpace::Uniform {
                continue;
            }
            let ty = m.types[g.ty].name.clone().unwrap_or_default();
            if !layouts.iter().any(|l| l.module == owner && l.wgsl == ty) {
                problems.push(format!(
                    "{name}.wgsl: uniform struct {ty} has no Rust twin in \
                     advex::gpu::uniform_layouts()"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every module has its own name (the pipeline cache's key) and a source.
#[test]
fn shader_names_are_unique() {
    let all = advex::gpu::Shader::ALL;
    let mut names: Vec<&str> = all.iter().map(|s| s.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        all.len(),
        "two shaders share a name: {names:?}"
    );
    for s in all {
        assert!(
            s.source().contains("@compute"),
            "{s}: no compute entry point"
        );
    }
}

/// The layering of issue 21: `src/attack` (the algorithms) never imports
/// `src/run` (the jobs that run them), and its modules import one another
/// without a circle.
#[test]
fn attack_modules_import_no_circle_and_nothing_from_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/attack");
    let mut modules: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for e in walkdir::WalkDir::new(&root) {
        let e = e.unwrap();
        if e.path().extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let rel = e.path().strip_prefix(&root).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let text = std::fs::read_to_string(e.path()).unwrap();
        let code: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        for line in &code {
            assert!(
                !line.contains("crate::run"),
                "{}: src/attack imports from src/run: {line}",
                rel.display()
            );
        }
        if module == "mod" {
            continue;
        }
        let deps = modules.entry(module.clone()).or_default();
        for line in &code {
            for prefix in ["super::", "crate::attack::"] {
                for (i, _) in line.match_indices(prefix) {
                    let name: String = line[i + prefix.len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    assert!(modules.len() >= 8, "{modules:?}");
    let names: std::collections::BTreeSet<String> = modules.keys().cloned().collect();
    // depth-first search for a path back to the start
    fn reaches(
        g: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        from: &str,
        to: &str,
        seen: &mut std::collections::BTreeSet<String>,
    ) -> bool {
        for d in g.get(from).into_iter().flatten() {
            if d == to || (seen.insert(d.clone()) && reaches(g, d, to, seen)) {
                return true;
            }
        }
        false
    }
    let graph: std::collections::BTreeMap<_, std::collections::BTreeSet<String>> = modules
        .iter()
        .map(|(m, d)| (m.clone(), d.intersection(&names).cloned().collect()))
        .collect();
    for m in &names {
        assert!(
            !reaches(&graph, m, m, &mut Default::default()),
            "src/attack/{m} imports itself through a circle: {graph:?}"
        );
    }
}
