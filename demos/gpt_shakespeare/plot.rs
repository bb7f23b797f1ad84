//! Loss curves as CSV and PNG (plotters). Axis labels use a system TrueType font when one is found.

use std::path::Path;

use plotters::prelude::*;

/// One run's curves: (step, train loss) for every step, (step, val loss) at each evaluation.
pub struct Curve {
    pub name: String,
    pub train: Vec<(u64, f32)>,
    pub val: Vec<(u64, f32)>,
}

/// `step,train_loss,val_loss` rows (val empty where not evaluated).
pub fn write_csv(path: &Path, curve: &Curve) -> std::io::Result<()> {
    let mut s = String::from("step,train_loss,val_loss\n");
    for (step, loss) in &curve.train {
        let val = curve.val.iter().find(|v| v.0 == *step).map(|v| v.1.to_string()).unwrap_or_default();
        s += &format!("{step},{loss},{val}\n");
    }
    std::fs::write(path, s)
}

fn register_font() -> bool {
    const FONTS: [&str; 4] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
        "C:\\Windows\\Fonts\\arial.ttf",
    ];
    FONTS.iter().any(|p| {
        std::fs::read(p).ok().is_some_and(|bytes| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice())).is_ok()
        })
    })
}

/// Moving average, so noisy per-step losses read as curves.
fn smooth(points: &[(u64, f32)], window: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0f64;
    for (i, p) in points.iter().enumerate() {
        sum += p.1 as f64;
        if i >= window {
            sum -= points[i - window].1 as f64;
        }
        out.push((p.0 as f64, sum / (i + 1).min(window) as f64));
    }
    out
}

/// Every curve in one chart: smoothed training loss (lines) and validation loss (lines with dots).
pub fn write_png(path: &Path, title: &str, curves: &[Curve]) -> Result<(), String> {
    let labels = register_font();
    if !labels {
        eprintln!("note: no TrueType font found (e.g. apt-get install fonts-dejavu-core); the plot has no labels");
    }
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let max_step = curves.iter().flat_map(|c| c.train.last().map(|p| p.0)).max().unwrap_or(1).max(1) as f64;
    let all = curves.iter().flat_map(|c| c.train.iter().chain(&c.val).map(|p| p.1 as f64));
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo < hi { (lo.max(0.0) * 0.95, hi.min(lo + 4.0) * 1.02) } else { (0.0, 5.0) };
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if labels {
        builder.caption(title, ("sans-serif", 24)).x_label_area_size(40).y_label_area_size(55);
    }
    let mut chart = builder.build_cartesian_2d(0f64..max_step, lo..hi).map_err(|e| err(&e))?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("step").y_desc("loss");
    if !labels {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| err(&e))?;
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let window = (c.train.len() / 50).max(1);
        let series =
            chart.draw_series(LineSeries::new(smooth(&c.train, window), color.stroke_width(1))).map_err(|e| err(&e))?;
        if labels {
            series
                .label(format!("{} (train)", c.name))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        let val: Vec<(f64, f64)> = c.val.iter().map(|p| (p.0 as f64, p.1 as f64)).collect();
        let series =
            chart.draw_series(LineSeries::new(val, color.stroke_width(3)).point_size(4)).map_err(|e| err(&e))?;
        if labels {
            series
                .label(format!("{} (val)", c.name))
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.stroke_width(3)));
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}
