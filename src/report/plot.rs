//! Accuracy (and success rate) against eps, as SVG.

use std::path::Path;

use plotters::prelude::*;

use super::Report;
use crate::error::{Error, Result};

pub fn write_svg_plot(path: &Path, report: &Report) -> Result<()> {
    let err = |e: String| Error::io(path, std::io::Error::other(e));
    let mut points: Vec<(f64, f64, f64)> = vec![(0.0, report.clean.accuracy, 0.0)];
    points.extend(
        report
            .epsilons
            .iter()
            .map(|e| (e.eps, e.accuracy, e.success_rate)),
    );
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max_eps = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-6);
    {
        let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let title = format!(
            "{} - {} on {} images",
            report.model.name,
            report.method.to_uppercase(),
            report.images
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_eps * 1.05, 0.0..1.02)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("eps (pixel units of [0,1] images)")
            .y_desc("fraction")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?
            .label("accuracy")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.0, p.1), 3, BLUE.filled())),
            )
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                points.iter().filter(|p| p.0 > 0.0).map(|p| (p.0, p.2)),
                RED.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?
            .label("success rate")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}
