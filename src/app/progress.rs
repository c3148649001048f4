//! The progress line: step i/n, it/s and ETA while generating; model loading with elapsed time.

use super::state::{ModelState, Studio};

pub fn show(ui: &mut egui::Ui, studio: &mut Studio) {
    if let ModelState::Loading { path: dir, since } = &studio.model {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!(
                "Loading model {} … {:.1} s",
                dir.display(),
                since.elapsed().as_secs_f32()
            ));
        });
        // The elapsed time ticks while the worker loads.
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(100));
        return;
    }
    let Some(r) = &studio.running else {
        let done = if studio.history.is_empty() { 0.0 } else { 1.0 };
        let text = match studio.history.last() {
            Some(h) => format!(
                "Done: {} steps in {:.2} s{}",
                h.metadata.steps,
                h.elapsed.as_secs_f64(),
                if studio.queue.is_empty() {
                    ""
                } else {
                    " · more queued"
                }
            ),
            None if studio.queue.is_empty() => "Ready".to_string(),
            None => "Starting…".to_string(),
        };
        ui.add(egui::ProgressBar::new(done).text(text));
        return;
    };
    let secs = r.elapsed.as_secs_f64();
    let its = if secs > 0.0 {
        r.step as f64 / secs
    } else {
        0.0
    };
    let eta = if its > 0.0 {
        (r.total.saturating_sub(r.step)) as f64 / its
    } else {
        f64::NAN
    };
    let mut text = format!("Step {}/{} · {:.2} it/s", r.step, r.total, its);
    if eta.is_finite() {
        text.push_str(&format!(" · ETA {eta:.1} s"));
    }
    if r.cancel_requested.is_some() {
        text.push_str(" · cancelling…");
    }
    if !studio.queue.is_empty() {
        text.push_str(&format!(" · {} queued", studio.queue.len()));
    }
    let fraction = if r.total > 0 {
        r.step as f32 / r.total as f32
    } else {
        0.0
    };
    ui.add(egui::ProgressBar::new(fraction).text(text));
}
