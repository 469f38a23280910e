//! The report as SVG: accuracy (and success rate) against eps, one accuracy
//! line per attack of a cascade; eps ticks in k/255 where every eps is on the
//! 8-bit grid; below it, for FGSM and FGM, the seed's linear view (the
//! first-order prediction of the loss increase beside the measured one).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::Report;
use crate::error::{Error, Result};

/// Line colours of the attacks of a cascade, in order.
const PALETTE: [RGBColor; 6] = [
    BLUE,
    RGBColor(0, 140, 70),
    RGBColor(230, 120, 0),
    MAGENTA,
    RGBColor(120, 70, 20),
    CYAN,
];

/// The x axis: eps, or its 8-bit level when every eps is on the grid.
struct Axis {
    levels: bool,
}

impl Axis {
    fn new(report: &Report) -> Self {
        // (eps arrive as f32 values: 1e-4 of a level absorbs their rounding)
        let on_grid = |e: f64| {
            let k = e * 255.0;
            (k - k.round()).abs() < 1e-4
        };
        Axis {
            levels: report.epsilons.iter().all(|e| on_grid(e.eps)),
        }
    }
    fn x(&self, eps: f64) -> f64 {
        if self.levels {
            eps * 255.0
        } else {
            eps
        }
    }
    fn desc(&self) -> &'static str {
        if self.levels {
            "eps (levels of an 8-bit pixel)"
        } else {
            "eps (pixel units of [0,1] images)"
        }
    }
    fn label(&self, v: f64) -> String {
        if !self.levels {
            return format!("{v:.3}");
        }
        if (v - v.round()).abs() > 1e-4 {
            return String::new();
        }
        match v.round() as i64 {
            0 => "0".into(),
            k => format!("{k}/255"),
        }
    }
}

pub fn write_svg_plot(path: &Path, report: &Report) -> Result<()> {
    let err = |e: String| Error::io(path, std::io::Error::other(e));
    let linear = report.epsilons.iter().any(|e| e.loss_increase.is_some());
    let height = if linear { 820 } else { 440 };
    {
        let root = SVGBackend::new(path, (720, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let axis = Axis::new(report);
        if linear {
            let (top, bottom) = root.split_vertically(440);
            accuracy_chart(&top, report, &axis).map_err(err)?;
            linear_chart(&bottom, report, &axis).map_err(err)?;
        } else {
            accuracy_chart(&root, report, &axis).map_err(err)?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A legend label, its colour and its points.
type Series = (String, RGBColor, Vec<(f64, f64)>);

fn accuracy_chart(area: &Area, report: &Report, axis: &Axis) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<_>| x.to_string();
    let mut eps: Vec<&super::EpsStats> = report.epsilons.iter().collect();
    eps.sort_by(|a, b| a.eps.total_cmp(&b.eps));
    let max_x = eps
        .iter()
        .map(|s| axis.x(s.eps))
        .fold(0.0, f64::max)
        .max(1e-6);
    let title = format!(
        "{} - {} on {} images",
        report.model.name,
        report.method.to_uppercase(),
        report.images
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..1.02)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(axis.desc())
        .y_desc("fraction")
        .x_label_formatter(&|v| axis.label(*v))
        .draw()
        .map_err(e)?;
    // (x, y) from the clean point through every eps.
    let line = |f: &dyn Fn(&super::EpsStats) -> Option<f64>, clean: f64| -> Vec<(f64, f64)> {
        std::iter::once((0.0, clean))
            .chain(eps.iter().filter_map(|s| f(s).map(|y| (axis.x(s.eps), y))))
            .collect()
    };
    let mut series: Vec<Series> = Vec::new();
    match &report.cascade {
        Some(names) => {
            for (i, name) in names.iter().enumerate() {
                let pts = line(
                    &|s| {
                        s.robust_accuracy_after
                            .as_ref()
                            .and_then(|v| v.get(i).copied())
                    },
                    report.clean.accuracy,
                );
                let label = if i + 1 == names.len() {
                    format!("after {name} (worst case)")
                } else {
                    format!("after {name}")
                };
                series.push((label, PALETTE[i % PALETTE.len()], pts));
            }
        }
        None => series.push((
            format!("{} accuracy", report.method),
            BLUE,
            line(&|s| Some(s.accuracy), report.clean.accuracy),
        )),
    }
    series.push((
        "success rate".into(),
        RED,
        line(&|s| Some(s.success_rate), 0.0),
    ));
    for (label, colour, pts) in series {
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, colour.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}

fn linear_chart(area: &Area, report: &Report, axis: &Axis) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<_>| x.to_string();
    let mut pts: Vec<(f64, f64, f64)> = report
        .epsilons
        .iter()
        .filter_map(|s| Some((axis.x(s.eps), s.predicted_loss_increase?, s.loss_increase?)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max_x = pts.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-6);
    let max_y = pts
        .iter()
        .flat_map(|p| [p.1, p.2])
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-6);
    let min_y = pts
        .iter()
        .map(|p| p.2)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::min);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "the linear view: loss increase against eps",
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x * 1.05, min_y..max_y * 1.05)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(axis.desc())
        .y_desc("mean loss increase")
        .x_label_formatter(&|v| axis.label(*v))
        .draw()
        .map_err(e)?;
    let norm = if report.method == "fgm" { "L2" } else { "L1" };
    let lines = [
        (
            format!("first order: eps * |grad J|_{norm}"),
            RGBColor(120, 120, 120),
            pts.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        ),
        (
            "measured: J(x_adv) - J(x)".to_string(),
            BLUE,
            pts.iter().map(|p| (p.0, p.2)).collect(),
        ),
    ];
    for (label, colour, line) in lines {
        let line: Vec<(f64, f64)> = std::iter::once((0.0, 0.0)).chain(line).collect();
        chart
            .draw_series(LineSeries::new(
                line.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart
            .draw_series(line.iter().map(|p| Circle::new(*p, 3, colour.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}
