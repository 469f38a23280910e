//! The `advex info` table.

use super::{Model, Op, Src};
use crate::ops::activation::Activation;

/// `1234567` -> `1,234,567`.
pub(crate) fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `1234567` -> `1.23 M`.
pub(crate) fn human(v: u64) -> String {
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, unit) in units {
        if v as f64 >= scale {
            return format!("{:.2} {unit}", v as f64 / scale);
        }
    }
    v.to_string()
}

fn pair(v: [u32; 2]) -> String {
    if v[0] == v[1] {
        v[0].to_string()
    } else {
        format!("{}x{}", v[0], v[1])
    }
}

fn pad(p: [u32; 4]) -> String {
    let [t, l, b, r] = p;
    if t == l && l == b && b == r {
        t.to_string()
    } else if t == b && l == r {
        format!("{t},{l}")
    } else {
        format!("{t},{l},{b},{r}")
    }
}

fn attrs(op: &Op) -> String {
    match op {
        Op::Conv2d { params, weight, .. } => {
            let [oc, icg, kh, kw] = weight.shape;
            let mut s = format!("{kh}x{kw} {}->{oc}", icg * params.groups);
            if params.stride != [1, 1] {
                s += &format!(" s{}", pair(params.stride));
            }
            if params.padding != [0; 4] {
                s += &format!(" p{}", pad(params.padding));
            }
            if params.dilation != [1, 1] {
                s += &format!(" d{}", pair(params.dilation));
            }
            if params.groups != 1 {
                s += &format!(" g{}", params.groups);
            }
            s
        }
        Op::Linear { weight, .. } => format!("{}->{}", weight.shape[1], weight.shape[0]),
        Op::Affine { scale, .. } => format!("{} channels", scale.len()),
        Op::LayerNorm { weight, eps, .. } => format!("{} channels eps {eps}", weight.len()),
        Op::Activation(Activation::LeakyRelu { negative_slope }) => {
            format!("slope {negative_slope}")
        }
        Op::Activation(Activation::Hardsigmoid { alpha, beta }) => {
            format!("alpha {alpha} beta {beta}")
        }
        Op::Activation(_) => String::new(),
        Op::MaxPool(p) | Op::AvgPool(p) => {
            let mut s = format!("{}x{} s{}", p.kernel[0], p.kernel[1], pair(p.stride));
            if p.padding != [0; 4] {
                s += &format!(" p{}", pad(p.padding));
            }
            if p.dilation != [1, 1] && matches!(op, Op::MaxPool(_)) {
                s += &format!(" d{}", pair(p.dilation));
            }
            if p.ceil_mode {
                s += " ceil";
            }
            if matches!(op, Op::AvgPool(_)) && !p.count_include_pad && p.padding != [0; 4] {
                s += " excl-pad";
            }
            s
        }
        _ => String::new(),
    }
}

pub(crate) fn summary(m: &Model) -> String {
    let header = [
        "#",
        "name",
        "inputs",
        "op",
        "attributes",
        "output",
        "params",
        "FLOPs",
    ];
    let mut rows: Vec<[String; 8]> = Vec::with_capacity(m.nodes.len());
    for (i, node) in m.nodes.iter().enumerate() {
        let inputs: Vec<String> = node
            .inputs
            .iter()
            .map(|s| match s {
                Src::Input => "input".to_string(),
                Src::Node(j) => j.to_string(),
            })
            .collect();
        rows.push([
            i.to_string(),
            node.name.clone(),
            inputs.join(","),
            node.op.name().to_string(),
            attrs(&node.op),
            format!("{}x{}x{}", node.shape.c, node.shape.h, node.shape.w),
            thousands(node.param_count()),
            thousands(m.node_flops(i)),
        ]);
    }
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let right = [true, false, false, false, false, false, true, true];
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (k, cell) in cells.iter().enumerate() {
            let fill = width[k].saturating_sub(cell.chars().count());
            if k > 0 {
                s.push_str("  ");
            }
            if right[k] {
                s.push_str(&" ".repeat(fill));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if k + 1 < cells.len() {
                    s.push_str(&" ".repeat(fill));
                }
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = format!("model `{}` ({})\n", m.name, m.path.display());
    out += &line(&header.map(String::from));
    for r in &rows {
        out += &line(r);
    }
    let (params, flops) = (m.param_count(), m.flops());
    out += &format!(
        "total: {} parameters, {} FLOPs per image ({}FLOPs)\n",
        thousands(params),
        thousands(flops),
        human(flops)
    );
    let [c, h, w] = m.input;
    let out_name = m.output_node().map_or("", |n| n.name.as_str());
    out += &format!(
        "input: {c}x{h}x{w} (C x H x W), output `{out_name}`: {} values\n",
        m.num_classes()
    );
    let p = &m.preprocess;
    let mut pre = Vec::new();
    if let Some(r) = p.resize {
        pre.push(format!("resize {r}"));
    }
    if let Some(cr) = p.crop {
        pre.push(format!("crop {cr}"));
    }
    pre.push(p.interpolation.clone());
    pre.push(format!("mean {:?}", p.mean));
    pre.push(format!("std {:?}", p.std));
    out += &format!("preprocess: {}\n", pre.join(", "));
    out += &match &m.classes {
        Some(cl) => format!("classes: {} named\n", cl.len()),
        None => format!("classes: {} (unnamed)\n", m.num_classes()),
    };
    out
}
