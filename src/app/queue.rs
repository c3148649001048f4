//! The queue panel: pending generations in run order; move them up or down, or remove them.

use super::actions::Action;
use super::state::Studio;
use super::Panel;

pub struct QueuePanel;

impl Panel for QueuePanel {
    fn id(&self) -> &'static str {
        "queue"
    }

    fn title(&self) -> &'static str {
        "Queue"
    }

    fn ui(&mut self, ui: &mut egui::Ui, studio: &mut Studio) {
        if let Some(r) = &studio.running {
            ui.label(format!(
                "Running: {} (seed {}, step {}/{})",
                short(&r.recipe.prompt),
                r.recipe.seed,
                r.step,
                r.total
            ));
            ui.separator();
        }
        if studio.queue.is_empty() {
            ui.weak("Nothing waiting. Batch count and live mode add jobs here.");
            return;
        }
        let n = studio.queue.len();
        let mut actions = Vec::new();
        egui::ScrollArea::vertical().show(ui, |ui| {
            for (i, q) in studio.queue.iter().enumerate() {
                ui.horizontal(|ui| {
                    ui.label(format!("{}.", i + 1));
                    ui.label(short(&q.recipe.prompt)).on_hover_text(format!(
                        "{}\nseed {} · {} steps · CFG {} · {}×{}",
                        q.recipe.prompt,
                        q.recipe.seed,
                        q.recipe.steps,
                        q.recipe.cfg_scale,
                        q.recipe.width,
                        q.recipe.height
                    ));
                    ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                        if ui
                            .small_button("Remove")
                            .on_hover_text("Remove from the queue")
                            .clicked()
                        {
                            actions.push(Action::CancelJob(q.job));
                        }
                        if ui
                            .add_enabled(i + 1 < n, egui::Button::new("Down").small())
                            .on_hover_text("Later")
                            .clicked()
                        {
                            actions.push(Action::MoveJob {
                                job: q.job,
                                to: i + 1,
                            });
                        }
                        if ui
                            .add_enabled(i > 0, egui::Button::new("Up").small())
                            .on_hover_text("Sooner")
                            .clicked()
                        {
                            actions.push(Action::MoveJob {
                                job: q.job,
                                to: i - 1,
                            });
                        }
                    });
                });
            }
        });
        for a in actions {
            studio.push(a);
        }
    }
}

/// The first few words of a prompt, for a one-line list.
fn short(prompt: &str) -> String {
    const MAX: usize = 32;
    if prompt.is_empty() {
        return "(empty prompt)".into();
    }
    let mut s: String = prompt.chars().take(MAX).collect();
    if prompt.chars().count() > MAX {
        s.push('…');
    }
    s
}
