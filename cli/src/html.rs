//! `baton report --html`: one self-contained HTML file (inline SVG drawn with plotters,
//! no scripts, nothing fetched) showing what a sweep measured against what it varied.

use crate::analysis::PowerLaw;
use crate::compare::{Comparison, Verdict};
use crate::tidy::{MAIN_TIMES, MODEL_STEPS, Row, axis_title, factors};
use baton_proto::spec::sweep::{last_field, short_names};
use plotters::prelude::*;

/// A plot: its kind and subject (`law stepMs seqLen`), for tests and for people
/// reading the source, and its SVG.
pub struct Plot {
    pub id: String,
    pub title: String,
    pub svg: String,
}

type Drawn = Result<(), Box<dyn std::error::Error>>;

const W: u32 = 560;
const H: u32 = 380;

/// Figures plotted against each numeric factor, by kind: the phases of a step, the
/// times of inference, a scenario's whole and each page's load and interactions.
pub fn is_law_figure(row: &Row) -> bool {
    matches!(
        row.figure.as_str(),
        "stepMs"
            | "forwardMs"
            | "backwardMs"
            | "optimizerMs"
            | "ttftMs"
            | "tpotMs"
            | "scenarioWallMs"
            | "loadMs"
            | "interactionBrowserMs"
            | "sleptMs"
    )
}

fn figure_title(row: &Row) -> String {
    if row.step.is_empty() { row.figure.clone() } else { format!("{} · {}", row.figure, row.step) }
}

/// Every plot the rows call for.
pub fn plots(rows: &[Row]) -> Vec<Plot> {
    let factors = factors(rows);
    let mut plots = Vec::new();
    // (step, figure) in the order first seen.
    let mut figures: Vec<(&str, &str)> = Vec::new();
    for row in rows.iter().filter(|r| is_law_figure(r)) {
        if !figures.contains(&(row.step.as_str(), row.figure.as_str())) {
            figures.push((&row.step, &row.figure));
        }
    }
    for factor in &factors {
        for (step, figure) in &figures {
            let of: Vec<&Row> = rows.iter().filter(|r| r.step == *step && r.figure == *figure).collect();
            if lawful(&of, factor) {
                plots.extend(law(&of, factor, &factors));
            }
        }
        if last_field(factor) == "threads" {
            let steps: Vec<&Row> = rows.iter().filter(|r| MODEL_STEPS.contains(&r.figure.as_str())).collect();
            if steps.iter().all(|r| r.x(factor).is_some()) {
                plots.extend(scaling(&steps, factor, &factors));
            }
        }
    }
    plots.extend(devices(rows, &factors));
    plots.extend(page_loads(rows, &factors));
    plots.extend(interactions(rows, &factors));
    plots
}

/// Whether a law can be fitted to these rows against `factor`: every row has a number
/// there, and there are three or more of them (two points fit any line exactly).
pub fn lawful(rows: &[&Row], factor: &str) -> bool {
    let mut xs: Vec<f64> = Vec::new();
    for r in rows {
        match r.x(factor) {
            Some(x) if !xs.contains(&x) => xs.push(x),
            Some(_) => {}
            None => return false,
        }
    }
    xs.len() >= 3
}

/// Rows grouped by the values of every factor but `factor`: one series each, in the
/// order the sweep ran them.
fn series<'a>(rows: &[&'a Row], factor: &str, factors: &[String]) -> Vec<(String, Vec<&'a Row>)> {
    let others: Vec<String> = factors.iter().filter(|f| *f != factor).cloned().collect();
    let mut groups: Vec<(String, Vec<&Row>)> = Vec::new();
    for row in rows {
        let label = row.label(&others);
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, members)) => members.push(row),
            None => groups.push((label, vec![row])),
        }
    }
    groups
}

fn draw(
    title: &str,
    id: String,
    body: impl FnOnce(DrawingArea<SVGBackend, plotters::coord::Shift>) -> Drawn,
) -> Option<Plot> {
    let mut svg = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string()).and_then(|_| body(root).map_err(|e| e.to_string()))
    };
    match drawn {
        Ok(()) => Some(Plot { id, title: title.to_string(), svg }),
        Err(e) => {
            eprintln!("warning: plot {title:?} left out: {e}");
            None
        }
    }
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// One series per combination of the other factors: its (x, median, p10, p90) sorted by
/// x, and the power law fitted to the medians.
pub type Series = (String, Vec<(f64, f64, f64, f64)>, Option<PowerLaw>);

pub fn fits(rows: &[&Row], factor: &str, factors: &[String]) -> Vec<Series> {
    series(rows, factor, factors)
        .into_iter()
        .map(|(label, points)| {
            let mut xs: Vec<(f64, f64, f64, f64)> = points
                .iter()
                .filter_map(|r| {
                    let s = r.summary();
                    Some((r.x(factor)?, s.p50, s.p10, s.p90))
                })
                .collect();
            xs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let fit = PowerLaw::fit(&xs.iter().map(|(x, m, _, _)| (*x, *m)).collect::<Vec<_>>());
            (label, xs, fit)
        })
        .collect()
}

/// A figure against a numeric factor, log–log (a power law is a line there), each
/// series with p10–p90 error bars and its fitted `t = a·x^k`, k and its 95 % interval
/// in the legend.
fn law(rows: &[&Row], factor: &str, factors: &[String]) -> Option<Plot> {
    let first = rows.first()?;
    let title = format!("{} vs {}", figure_title(first), axis_title(factor));
    let groups = fits(rows, factor, factors);
    let (x_lo, x_hi) = bounds(rows.iter().filter_map(|r| r.x(factor)));
    let (y_lo, y_hi) = bounds(rows.iter().flat_map(|r| {
        let s = r.summary();
        [s.p10, s.p90]
    }));
    if !(x_lo > 0.0 && y_lo > 0.0 && x_hi > x_lo) {
        return None;
    }
    // Room for the legend: below the data when times grow with x, above when they fall.
    let rising = groups.iter().filter_map(|(_, _, f)| f.map(|f| f.k)).sum::<f64>() >= 0.0;
    let y_range = if rising { y_lo / 5.0..y_hi * 1.5 } else { y_lo / 1.5..y_hi * 5.0 };
    let id = ["law", &first.step, &first.figure, factor]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    draw(&title, id, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d((x_lo / 1.2..x_hi * 1.2).log_scale(), y_range.log_scale())?;
        chart
            .configure_mesh()
            .x_desc(axis_title(factor))
            .y_desc(first.unit.name())
            .y_labels(6)
            .x_label_formatter(&|v| number(*v))
            .y_label_formatter(&|v| number(*v))
            .draw()?;
        for (i, (label, xs, fit)) in groups.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart.draw_series(
                xs.iter().map(|(x, m, lo, hi)| ErrorBar::new_vertical(*x, *lo, *m, *hi, color.filled(), 6)),
            )?;
            let name = match (&fit, label.is_empty()) {
                (Some(f), true) => f.label(),
                (Some(f), false) => format!("{label}: {}", f.label()),
                (None, _) => label.clone(),
            };
            chart
                .draw_series(LineSeries::new(xs.iter().map(|(x, m, _, _)| (*x, *m)), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            if let Some(f) = *fit {
                let (a, b) = (xs[0].0, xs[xs.len() - 1].0);
                let line = (0..=20).map(|j| a * (b / a).powf(j as f64 / 20.0)).map(|x| (x, f.at(x)));
                chart.draw_series(DashedLineSeries::new(line, 4, 3, color.mix(0.7).stroke_width(1)))?;
            }
        }
        legend(&mut chart, if rising { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
    })
}

/// Speed-up against threads (the fewest threads' median step over each one's), with
/// the ideal line.
fn scaling(rows: &[&Row], factor: &str, factors: &[String]) -> Option<Plot> {
    let first = rows.first()?;
    let title = format!("{} speed-up vs threads", first.figure);
    let groups = series(rows, factor, factors);
    let (x_lo, x_hi) = bounds(rows.iter().filter_map(|r| r.x(factor)));
    if !(x_lo > 0.0 && x_hi > x_lo) {
        return None;
    }
    let curves: Vec<(String, Vec<(f64, f64)>)> = groups
        .into_iter()
        .filter_map(|(label, points)| {
            let mut xs: Vec<(f64, f64)> = points.iter().filter_map(|r| Some((r.x(factor)?, r.summary().p50))).collect();
            xs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let base = xs.first()?.1;
            Some((label, xs.iter().map(|(x, t)| (*x, base / t)).collect()))
        })
        .collect();
    let y_hi = bounds(curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.1))).1.max(x_hi / x_lo);
    draw(&title, format!("scaling {} {}", first.figure, factor), |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(x_lo * 0.9..x_hi * 1.1, 0.0..y_hi * 1.1)?;
        chart.configure_mesh().x_desc("threads").y_desc("speed-up (x)").draw()?;
        chart
            .draw_series(DashedLineSeries::new([(x_lo, 1.0), (x_hi, x_hi / x_lo)], 5, 4, BLACK.stroke_width(1)))?
            .label("ideal")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        for (i, (label, curve)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let name = if label.is_empty() { "measured".to_string() } else { label.clone() };
            chart
                .draw_series(LineSeries::new(curve.iter().copied(), color.stroke_width(2)).point_size(3))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// Bars by category (x) and stacked segments; `markers` are drawn as dots.
struct Bars {
    categories: Vec<String>,
    /// Segment name -> value per category; stacked in this order.
    segments: Vec<(String, Vec<f64>)>,
    /// Marker name -> value per category.
    markers: Vec<(String, Vec<f64>)>,
    /// Side by side instead of stacked.
    grouped: bool,
}

fn bar_chart(title: &str, id: String, y_desc: &str, bars: Bars) -> Option<Plot> {
    let n = bars.categories.len();
    if n == 0 {
        return None;
    }
    let stack_hi = (0..n)
        .map(|c| {
            let each = bars.segments.iter().map(|(_, v)| v[c].max(0.0));
            if bars.grouped { each.fold(0.0, f64::max) } else { each.sum() }
        })
        .chain(bars.markers.iter().flat_map(|(_, v)| v.iter().copied()))
        .fold(0.0, f64::max);
    let categories = bars.categories.clone();
    draw(title, id, |root| {
        let mut chart = category_chart(&root, title, &categories, 0.0..stack_hi * 1.6 + 1e-9, y_desc)?;
        let k = bars.segments.len().max(1) as f64;
        for (s, (name, values)) in bars.segments.iter().enumerate() {
            let color = Palette99::pick(s).to_rgba();
            let rects = values.iter().enumerate().map(|(c, v)| {
                let below: f64 =
                    if bars.grouped { 0.0 } else { bars.segments[..s].iter().map(|(_, w)| w[c].max(0.0)).sum() };
                let (x0, x1) = if bars.grouped {
                    let w = 0.7 / k;
                    (c as f64 - 0.35 + s as f64 * w, c as f64 - 0.35 + (s as f64 + 1.0) * w)
                } else {
                    (c as f64 - 0.3, c as f64 + 0.3)
                };
                Rectangle::new([(x0, below), (x1, below + v.max(0.0))], color.filled())
            });
            chart
                .draw_series(rects)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        for (m, (name, values)) in bars.markers.iter().enumerate() {
            let color = Palette99::pick(bars.segments.len() + m).to_rgba();
            chart
                .draw_series(values.iter().enumerate().map(|(c, v)| Circle::new((c as f64, *v), 5, color.filled())))?
                .label(name.as_str())
                .legend(move |(x, y)| Circle::new((x + 6, y), 5, color.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// CPU and GPU side by side, when points ran on both: the step's median per point.
fn devices(rows: &[Row], factors: &[String]) -> Vec<Plot> {
    let kind = |d: &str| if d.starts_with("cuda") { "GPU" } else { "CPU" };
    let steps: Vec<&Row> = rows.iter().filter(|r| MODEL_STEPS.contains(&r.figure.as_str())).collect();
    let mut kinds: Vec<&str> = steps.iter().map(|r| kind(&r.device)).collect();
    kinds.sort();
    kinds.dedup();
    if kinds.len() < 2 {
        return Vec::new();
    }
    let others: Vec<String> = factors.iter().filter(|f| !f.ends_with(".device")).cloned().collect();
    let mut categories: Vec<String> = Vec::new();
    for r in &steps {
        let label = r.label(&others);
        if !categories.contains(&label) {
            categories.push(label);
        }
    }
    let segments = kinds
        .iter()
        .map(|k| {
            let values = categories
                .iter()
                .map(|c| {
                    steps
                        .iter()
                        .find(|r| kind(&r.device) == *k && r.label(&others) == *c)
                        .map_or(0.0, |r| r.summary().p50)
                })
                .collect();
            (k.to_string(), values)
        })
        .collect();
    let bars = Bars { categories, segments, markers: Vec::new(), grouped: true };
    bar_chart("CPU vs GPU: median step", "devices".into(), "ms", bars).into_iter().collect()
}

/// Each page's load, per point: TTFB, then to DOMContentLoaded, then to load, stacked;
/// first and largest contentful paint as dots.
fn page_loads(rows: &[Row], factors: &[String]) -> Vec<Plot> {
    let mut pages: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.figure == "loadMs") {
        if !pages.contains(&r.step.as_str()) {
            pages.push(&r.step);
        }
    }
    let median =
        |step: &str, point: &Row, figure: &str| point.sibling(rows, step, figure).map_or(0.0, |r| r.summary().p50);
    pages
        .into_iter()
        .filter_map(|page| {
            let points: Vec<&Row> = rows.iter().filter(|r| r.step == page && r.figure == "loadMs").collect();
            let categories = points.iter().map(|p| p.label(factors)).collect();
            let column = |f: &str| points.iter().map(|p| median(page, p, f)).collect::<Vec<f64>>();
            let (ttfb, dcl, load) = (column("ttfbMs"), column("domContentLoadedMs"), column("loadMs"));
            let to_dcl = dcl.iter().zip(&ttfb).map(|(d, t)| d - t).collect();
            let to_load = load.iter().zip(&dcl).map(|(l, d)| l - d).collect();
            let bars = Bars {
                categories,
                segments: vec![
                    ("TTFB".into(), ttfb),
                    ("→ DOMContentLoaded".into(), to_dcl),
                    ("→ load".into(), to_load),
                ],
                markers: vec![
                    ("FCP".into(), column("firstContentfulPaintMs")),
                    ("LCP".into(), column("largestContentfulPaintMs")),
                ],
                grouped: false,
            };
            bar_chart(&format!("page load · {page}"), format!("pageload {page}"), "ms (median)", bars)
        })
        .collect()
}

/// Every interaction's times per point, each repeat a dot, the median a bar.
fn interactions(rows: &[Row], factors: &[String]) -> Vec<Plot> {
    let mut steps: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.figure == "interactionBrowserMs") {
        if !steps.contains(&r.step.as_str()) {
            steps.push(&r.step);
        }
    }
    steps
        .into_iter()
        .filter_map(|step| {
            let points: Vec<&Row> =
                rows.iter().filter(|r| r.step == step && r.figure == "interactionBrowserMs").collect();
            let title = format!("interaction · {step}");
            let hi = bounds(points.iter().flat_map(|r| r.samples.iter().copied())).1;
            let labels: Vec<String> = points.iter().map(|p| p.label(factors)).collect();
            draw(&title, format!("interaction {step}"), |root| {
                let y_desc = "ms, input event → condition (page clock)";
                let mut chart = category_chart(&root, &title, &labels, 0.0..hi * 1.15 + 1e-9, y_desc)?;
                for (c, p) in points.iter().enumerate() {
                    let color = Palette99::pick(c).to_rgba();
                    let m = p.summary().p50;
                    let count = p.samples.len().max(1) as f64;
                    chart.draw_series(p.samples.iter().enumerate().map(|(i, v)| {
                        let jitter = (i as f64 / count - 0.5) * 0.4;
                        Circle::new((c as f64 + jitter, *v), 3, color.mix(0.6).filled())
                    }))?;
                    chart.draw_series(std::iter::once(PathElement::new(
                        vec![(c as f64 - 0.3, m), (c as f64 + 0.3, m)],
                        color.stroke_width(3),
                    )))?;
                }
                Ok(())
            })
        })
        .collect()
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Drawn
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(position)
        .draw()?;
    Ok(())
}

use plotters::coord::types::RangedCoordf64;

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart whose x axis is named categories at 0, 1, …, their names turned to fit.
fn category_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    categories: &[String],
    y: std::ops::Range<f64>,
    y_desc: &str,
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    let n = categories.len();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(130)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_style(category_font())
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                categories.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()?;
    Ok(chart)
}

/// Category names under bars, turned to read downwards so long point labels fit.
fn category_font() -> TextStyle<'static> {
    ("sans-serif", 11).into_font().transform(FontTransform::Rotate90).into()
}

/// 1234 → 1234, 0.0123 → 0.0123, 1.5e6 → 1.5M.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
    .trim_end_matches(".000")
    .to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page: a heading, the point table (tokens/s and MFU where measured), the plots.
/// A part of a page: one job or sweep (its rows and plots), or a comparison.
pub struct Section<'a> {
    pub title: String,
    pub subtitle: String,
    pub rows: &'a [Row],
    pub plots: Vec<Plot>,
}

impl<'a> Section<'a> {
    /// What these rows (one job's or sweep's) call for.
    pub fn of(title: String, subtitle: String, rows: &'a [Row]) -> Self {
        Section { title, subtitle, rows, plots: plots(rows) }
    }
}

/// The page: per section, a heading, the point table (tokens/s and MFU where measured)
/// and the plots.
pub fn page(title: &str, sections: &[Section]) -> String {
    let mut html = String::new();
    html.push_str(&format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;font-size:13px}}\
         td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}}th{{background:#f4f4f4}}\
         td.l,th.l{{text-align:left}}.plots{{display:flex;flex-wrap:wrap;gap:12px}}\
         figure{{margin:0;border:1px solid #eee}}figcaption{{font-size:12px;color:#666;padding:2px 6px}}\
         .bar{{background:#4a90d9;height:9px;display:inline-block}}</style></head><body>\
         <h1>{t}</h1>",
        t = escape(title),
    ));
    for section in sections {
        html.push_str(&format!("<h2>{}</h2><p>{}</p>", escape(&section.title), escape(&section.subtitle)));
        html.push_str(&point_table(section.rows, &factors(section.rows)));
        html.push_str("<div class=\"plots\">");
        for plot in &section.plots {
            html.push_str(&format!(
                "<figure data-plot=\"{}\">{}<figcaption>{}</figcaption></figure>",
                escape(&plot.id),
                plot.svg,
                escape(&plot.title)
            ));
        }
        html.push_str("</div>");
    }
    html.push_str("</body></html>\n");
    html
}

/// One line per point: its values, the main time's median and p10–p90, and tokens/s
/// and MFU where measured.
fn point_table(rows: &[Row], factors: &[String]) -> String {
    let mains: Vec<&Row> = rows.iter().filter(|r| MAIN_TIMES.contains(&r.figure.as_str())).collect();
    if mains.is_empty() {
        return String::new();
    }
    let extra = |of: &Row, figure: &str| of.sibling(rows, "", figure).map(|r| r.summary().p50);
    let max = mains.iter().map(|r| r.summary().p50).fold(0.0, f64::max);
    let mut t = String::from("<table><tr>");
    for name in short_names(factors) {
        t.push_str(&format!("<th class=\"l\">{}</th>", escape(&name)));
    }
    t.push_str(&format!(
        "<th>device</th><th>{} median</th><th>p10–p90</th><th class=\"l\"></th><th>tokens/s</th><th>MFU</th><th>n</th></tr>",
        escape(&mains[0].figure)
    ));
    for r in mains {
        let s = r.summary();
        t.push_str("<tr>");
        for f in factors {
            t.push_str(&format!("<td class=\"l\">{}</td>", escape(&r.value(f))));
        }
        let tokens = extra(r, "tokensPerS").map_or(String::new(), |v| format!("{v:.0}"));
        let mfu = extra(r, "mfu").map_or(String::new(), |v| format!("{:.1}%", v * 100.0));
        let width = if max > 0.0 { (s.p50 / max * 160.0).round() } else { 0.0 };
        t.push_str(&format!(
            "<td>{}</td><td>{:.2} ms</td><td>{:.2}–{:.2}</td><td class=\"l\"><span class=\"bar\" style=\"width:{width}px\"></span></td><td>{tokens}</td><td>{mfu}</td><td>{}</td></tr>",
            escape(&r.device),
            s.p50,
            s.p10,
            s.p90,
            s.count
        ));
    }
    t.push_str("</table>");
    t
}

/// `baton compare --html`: B/A per figure with its bootstrap 95 % interval, against
/// the no-change line and the threshold's band.
pub fn comparison_page(title: &str, found: &[Comparison], threshold: f64) -> String {
    let n = found.len();
    let labels: Vec<String> = found
        .iter()
        .map(|c| {
            [c.point.as_str(), c.step.as_str(), c.figure.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" · ")
        })
        .collect();
    let (lo, hi) = bounds(found.iter().flat_map(|c| [c.ci.0, c.ci.1, c.ratio, 1.0 - threshold, 1.0 + threshold]));
    let plot = draw("B / A per figure (median, bootstrap 95 % CI)", "ratios".into(), |root| {
        let title = "B / A per figure (median, bootstrap 95 % CI)";
        let mut chart = category_chart(&root, title, &labels, lo * 0.95..hi * 1.05, "B / A")?;
        let edge = (-0.5, n as f64 - 0.5);
        chart.draw_series(std::iter::once(PathElement::new(vec![(edge.0, 1.0), (edge.1, 1.0)], BLACK)))?;
        for band in [1.0 - threshold, 1.0 + threshold] {
            chart.draw_series(DashedLineSeries::new(
                [(edge.0, band), (edge.1, band)],
                5,
                4,
                BLACK.mix(0.4).stroke_width(1),
            ))?;
        }
        for (i, c) in found.iter().enumerate() {
            let color = match c.verdict {
                Verdict::Regression => RED.to_rgba(),
                Verdict::Improvement => GREEN.to_rgba(),
                Verdict::Same => BLUE.mix(0.7),
            };
            chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                i as f64,
                c.ci.0,
                c.ratio,
                c.ci.1,
                color.filled(),
                10,
            )))?;
            chart.draw_series(std::iter::once(Circle::new((i as f64, c.ratio), 4, color.filled())))?;
        }
        Ok(())
    });
    let subtitle =
        format!("red: a regression (worse by more than {:.0} %, p < 0.05); green: an improvement", threshold * 100.0);
    page(title, &[Section { title: "B / A".into(), subtitle, rows: &[], plots: plot.into_iter().collect() }])
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::tidy::rows;
    use baton_proto::spec::sweep::from_json;
    use baton_proto::v1::{
        Gpt2RunConfig, Gpt2TrainReport, Job, JobResult, JobState, PhaseStats, SweepPoint, job_result,
    };

    /// A GPT-2 training point whose step takes `ms` (±2 % over its samples).
    pub fn train_job(id: &str, values: &[(&str, serde_json::Value)], ms: f64, device: &str) -> Job {
        let samples: Vec<f64> = [1.0, 1.02, 0.98, 1.01, 0.99].iter().map(|f| f * ms).collect();
        let stats = PhaseStats { count: 5, p50_ms: ms, samples_ms: samples, ..Default::default() };
        let report = Gpt2TrainReport {
            step: Some(stats.clone()),
            forward: Some(PhaseStats {
                samples_ms: stats.samples_ms.iter().map(|v| v / 3.0).collect(),
                ..stats.clone()
            }),
            tokens_per_s: 1000.0 / ms,
            mfu: 0.1,
            config: Some(Gpt2RunConfig { parameters: 124_000_000, device: device.into(), ..Default::default() }),
            ..Default::default()
        };
        Job {
            id: id.into(),
            state: JobState::Succeeded as i32,
            sweep_id: "sweep".into(),
            point: Some(SweepPoint {
                values: values.iter().map(|(k, v)| (k.to_string(), from_json(v))).collect(),
                repeat: 1,
            }),
            result: Some(JobResult { kind: Some(job_result::Kind::Gpt2Train(report)) }),
            ..Default::default()
        }
    }

    #[test]
    fn a_square_law_sweep_plots_with_its_k_and_every_plot_is_in_the_page() {
        use serde_json::json;
        let mut jobs = Vec::new();
        for threads in [1, 2] {
            for (i, seq) in [64.0, 128.0, 256.0, 512.0].iter().enumerate() {
                let ms = 1e-3 * seq * seq / f64::from(threads);
                let values = [("gpt2Train.seqLen", json!(*seq as u64)), ("gpt2Train.threads", json!(threads))];
                jobs.push(train_job(
                    &format!("{threads}-{i}"),
                    &values,
                    ms,
                    if threads == 1 { "cpu" } else { "cuda:0" },
                ));
            }
        }
        let rows = rows(&jobs);
        let section = Section::of("sweep".into(), "test".into(), &rows);
        let plots = &section.plots;
        let ids: Vec<&str> = plots.iter().map(|p| p.id.as_str()).collect();
        for want in [
            "law stepMs gpt2Train.seqLen",
            "law forwardMs gpt2Train.seqLen",
            "scaling stepMs gpt2Train.threads",
            "devices",
        ] {
            assert!(ids.contains(&want), "{want:?} missing from {ids:?}");
        }
        assert!(!ids.contains(&"law stepMs gpt2Train.threads"), "two thread counts fit no law: {ids:?}");
        let html = page("sweep", std::slice::from_ref(&section));
        assert_eq!(html.matches("<svg").count(), plots.len());
        assert!(!html.contains("<script") && !html.contains(" src=") && !html.contains(" href="), "nothing fetched");
        // The legend of the step law: one fit per thread count, k = 2.00.
        let law = &plots.iter().find(|p| p.id == "law stepMs gpt2Train.seqLen").unwrap().svg;
        let ks: Vec<f64> = law
            .match_indices("k = ")
            .map(|(i, _)| law[i + 4..].split([' ', '<']).next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ks.len(), 2, "{law}");
        assert!(ks.iter().all(|k| (k - 2.0).abs() < 0.05), "{ks:?}");
    }
}
