//! The left panel: model, prompts, sliders, seed, sampler, batch count, live toggle, and the
//! Generate button that becomes Cancel while work is under way.

use egui::{Response, RichText, Slider};

use super::actions::Action;
use super::mask_editor::MaskEditor;
use super::state::{InitPicture, ModelState, Showing, Studio};
use super::token_count::Count;
use crate::diffusion::schedulers::{Sampler, Spacing};

pub const MAX_STEPS: usize = 150;
pub const MAX_CFG: f64 = 30.0;
pub const MAX_SIDE: usize = 2048;

pub fn show(ui: &mut egui::Ui, studio: &mut Studio) {
    // Generate stays in view at the bottom however long the settings above it grow.
    ui.with_layout(egui::Layout::bottom_up(egui::Align::Min), |ui| {
        ui.add_space(6.0);
        generate_button(ui, studio);
        ui.add_space(4.0);
        ui.with_layout(egui::Layout::top_down(egui::Align::Min), |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                ui.add_space(6.0);
                model_line(ui, studio);
                ui.separator();
                prompts(ui, studio);
                if matches!(&studio.model, ModelState::Ready(info) if info.sdxl) {
                    sdxl_fields(ui, studio);
                }
                init_section(ui, studio);
                hires_section(ui, studio);
                ui.add_space(4.0);
                sliders(ui, studio);
                ui.add_space(8.0);
            });
        });
    });
}

fn model_line(ui: &mut egui::Ui, studio: &mut Studio) {
    ui.horizontal(|ui| {
        let text = match &studio.model {
            ModelState::None => "No model".to_string(),
            ModelState::Loading { path: dir, .. } => format!("Loading {}…", folder_name(dir)),
            ModelState::Ready(info) => info.name.clone(),
            ModelState::Failed { path: dir, .. } => format!("{} (failed)", folder_name(dir)),
        };
        ui.label(RichText::new("Model").strong());
        ui.label(text).on_hover_text(match &studio.model {
            ModelState::Ready(info) => info.path.display().to_string(),
            _ => String::new(),
        });
        ui.menu_button("Open…", |ui| {
            if ui.button("Checkpoint file…").clicked() {
                studio.push(Action::PickModelFile);
                ui.close();
            }
            if ui.button("Diffusers folder…").clicked() {
                studio.push(Action::PickModelFolder);
                ui.close();
            }
        })
        .response
        .on_hover_text("A .safetensors/.ckpt checkpoint or a diffusers folder; the Models tab lists your library");
    });
    let mut dismiss = false;
    if let Some(offer) = &studio.switch_offer {
        let offer = offer.clone();
        super::theme::notice_frame(ui, false).show(ui, |ui| {
            ui.label(format!("This image was made with {}.", offer.name));
            ui.horizontal(|ui| {
                if ui.button("Switch to it").clicked() {
                    studio.push(Action::OpenModelPath(offer.path.clone()));
                    dismiss = true;
                }
                if ui.small_button("Keep this model").clicked() {
                    dismiss = true;
                }
            });
        });
    }
    if dismiss {
        studio.switch_offer = None;
    }
    let mut dismiss = false;
    if let Some((name, few)) = studio.few_step_offer.clone() {
        super::theme::notice_frame(ui, false).show(ui, |ui| {
            ui.label(format!(
                "{name} looks like {}: it is made for {} steps at CFG {}.",
                few.kind, few.steps, few.cfg_scale
            ));
            ui.horizontal(|ui| {
                let sampler = few.sampler.map_or(String::new(), |(s, sp)| {
                    format!(", {} {sp}", s.a1111_name())
                });
                let apply = format!("Use {} steps, CFG {}{sampler}", few.steps, few.cfg_scale);
                if ui.button(apply).clicked() {
                    let s = &mut studio.settings;
                    s.steps = few.steps;
                    s.cfg_scale = few.cfg_scale;
                    if let Some((sampler, spacing)) = few.sampler {
                        s.sampler = Some(sampler.cli_name().to_string());
                        s.spacing = Some(spacing.name().to_string());
                    }
                    dismiss = true;
                }
                if ui.small_button("Keep my settings").clicked() {
                    dismiss = true;
                }
            });
        });
    }
    if dismiss {
        studio.few_step_offer = None;
    }
}

fn folder_name(dir: &std::path::Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

fn prompts(ui: &mut egui::Ui, studio: &mut Studio) {
    let tokenizer = match &studio.model {
        ModelState::Ready(info) => Some(info.tokenizer.0.clone()),
        _ => None,
    };
    let counts = &mut studio.token_counts;
    let s = &mut studio.settings;
    let count = counts.count(tokenizer.as_ref(), &s.prompt);
    prompt_field(ui, "Prompt", &mut s.prompt, "What to paint", 4, count);
    let count = counts.count(tokenizer.as_ref(), &s.negative_prompt);
    prompt_field(
        ui,
        "Negative prompt",
        &mut s.negative_prompt,
        "What to avoid",
        2,
        count,
    );
}

/// A labelled multi-line prompt box (the label is also its accessible name), with A1111's
/// token count ("12/75") beside the label when known.
fn prompt_field(
    ui: &mut egui::Ui,
    label: &str,
    text: &mut String,
    hint: &str,
    rows: usize,
    count: Option<Count>,
) {
    let label = ui
        .horizontal(|ui| {
            let label = ui.label(label);
            if let Some(c) = count {
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    ui.weak(format!("{}/{}", c.tokens, c.capacity))
                        .on_hover_text(format!(
                            "{} tokens in {} chunk(s) of 75: a longer prompt is read in more \
                         chunks, as AUTOMATIC1111 reads it; nothing is cut. BREAK starts a \
                         new chunk; (word:1.2) and [word] weigh words up and down.",
                            c.tokens, c.chunks
                        ));
                });
            }
            label
        })
        .inner;
    ui.add(
        egui::TextEdit::multiline(text)
            .hint_text(hint)
            .desired_rows(rows)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(label.id);
}

/// img2img: the picture Generate starts from (dropped on the canvas, or an image's "Use as
/// init"), and the strength.
fn init_section(ui: &mut egui::Ui, studio: &mut Studio) {
    let mut requeue = false;
    let mut clear = false;
    let mut use_offer = None;
    let Studio {
        init,
        init_offer,
        settings,
        showing,
        ..
    } = studio;
    egui::CollapsingHeader::new("Image to image")
        .id_salt("img2img")
        .default_open(true)
        .show(ui, |ui| {
            if let Some((offer, mask)) = init_offer.as_ref() {
                let name = offer.file_name().unwrap_or_default().to_string_lossy();
                let masked = if mask.is_some() { " with a mask" } else { "" };
                super::theme::notice_frame(ui, false).show(ui, |ui| {
                    let missing = std::iter::once(offer).chain(mask).find(|p| !p.is_file());
                    match missing {
                        None => {
                            ui.label(format!("The restored image started from {name}{masked}."));
                            if ui.button("Start from it too").clicked() {
                                use_offer = Some((offer.clone(), mask.clone()));
                            }
                        }
                        Some(gone) => {
                            ui.label(format!(
                                "The restored image started from {name}{masked}, but {} is \
                                 missing.",
                                gone.display()
                            ));
                        }
                    }
                });
            }
            let Some(init) = init else {
                ui.weak(
                    "Drop a picture on the canvas, or press \"Use as init\" under an image, to \
                     start from it instead of noise.",
                );
                return;
            };
            ui.horizontal(|ui| {
                let (w, h) = init.picture.dimensions();
                let side = 72.0;
                let scale = side / w.max(h).max(1) as f32;
                let size = egui::vec2(w as f32 * scale, h as f32 * scale);
                ui.add(egui::Image::new((init.thumbnail.id(), size)).alt_text("Starting picture"));
                ui.vertical(|ui| {
                    let name = init
                        .source
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    ui.label(name)
                        .on_hover_text(init.source.display().to_string());
                    ui.weak(format!("{w}×{h}, covered and centre-cropped to the size"));
                    if ui
                        .button("Clear")
                        .on_hover_text("Back to text to image")
                        .clicked()
                    {
                        clear = true;
                    }
                });
            });
            let strength = Slider::new(&mut settings.strength, 0.01..=1.0)
                .fixed_decimals(2)
                .text("Strength");
            requeue |= released(&ui.add(strength).on_hover_text(
                "How much of the picture is repainted: 1 = all of it, small = small changes",
            ));
            settings.strength = hundredths(settings.strength);
            let steps = settings.steps;
            match crate::diffusion::init_image::first_step(steps, settings.strength) {
                Some(first) => ui.weak(format!("Runs the last {} of {steps} steps", steps - first)),
                None => ui.colored_label(
                    ui.visuals().warn_fg_color,
                    format!("Too low for {steps} steps: no step would run"),
                ),
            };
            mask_controls(ui, init, settings, showing, &mut requeue);
        });
    if clear {
        studio.push(Action::ClearInit);
    }
    if let Some((picture, mask)) = use_offer {
        studio.push(Action::UseAsInit { picture, mask });
    }
    if requeue && studio.settings.live {
        studio.push(Action::LiveRequeue);
    }
}

/// Inpainting: paint a mask on the canvas over the starting picture (white = repaint).
fn mask_controls(
    ui: &mut egui::Ui,
    init: &mut InitPicture,
    settings: &mut crate::settings::Settings,
    showing: &mut Showing,
    requeue: &mut bool,
) {
    let mask_blur = &mut settings.mask_blur;
    ui.add_space(4.0);
    let Some(mask) = &mut init.mask else {
        if ui
            .button("Paint a mask (inpaint)")
            .on_hover_text("Repaint only where you paint, keep the rest")
            .clicked()
        {
            let (w, h) = init.picture.dimensions();
            init.mask = Some(MaskEditor::new(w, h));
            *showing = Showing::Mask;
        }
        return;
    };
    ui.horizontal(|ui| {
        ui.label(RichText::new("Mask").strong());
        if *showing != Showing::Mask && ui.button("Show").clicked() {
            *showing = Showing::Mask;
        }
        if mask.is_empty() {
            ui.weak("paint on the canvas: red repaints");
        }
    });
    ui.add(
        Slider::new(&mut mask.brush, 0.005..=0.4)
            .text("Brush")
            .show_value(false),
    )
    .on_hover_text("Brush size, as a share of the picture");
    *requeue |= released(
        &ui.add(Slider::new(mask_blur, 0..=64).text("Mask blur"))
            .on_hover_text(
                "Keep the picture's own pixels outside the mask, blended over this many pixels \
                 (0: the image as generated)",
            ),
    );
    ui.horizontal(|ui| {
        *requeue |= ui
            .checkbox(&mut settings.only_masked, "Only masked")
            .on_hover_text(
                "Generate the box around the mask at the size above and put it back: small \
                 areas get the model's full resolution; the picture keeps its size",
            )
            .changed();
        if settings.only_masked {
            *requeue |= released(
                &ui.add(
                    egui::DragValue::new(&mut settings.masked_padding)
                        .range(0..=256)
                        .suffix(" px"),
                )
                .on_hover_text("Padding around the mask's box"),
            );
        }
    });
    ui.horizontal(|ui| {
        ui.toggle_value(&mut mask.erase, "Eraser");
        if ui.button("Invert").clicked() {
            mask.invert();
            *requeue = true;
        }
        if ui
            .add_enabled(mask.can_undo(), egui::Button::new("Undo"))
            .clicked()
        {
            mask.undo();
            *requeue = true;
        }
        if ui.button("Clear").on_hover_text("Clear the mask").clicked() {
            mask.clear();
        }
    });
    if ui
        .small_button("Remove mask")
        .on_hover_text("Back to plain img2img")
        .clicked()
    {
        init.mask = None;
        *showing = Showing::Live;
    }
}

/// Hires fix: the second pass's enlargement, steps, strength and upscaler (A1111's fields).
fn hires_section(ui: &mut egui::Ui, studio: &mut Studio) {
    let mut requeue = false;
    let img2img = studio.init.is_some();
    let multiple = studio.size_multiple();
    let s = &mut studio.settings;
    egui::CollapsingHeader::new("Hires fix")
        .id_salt("hires")
        .show(ui, |ui| {
            ui.add_enabled_ui(!img2img, |ui| {
                requeue |= ui
                    .checkbox(&mut s.hires_on, "Enlarge and repaint")
                    .on_hover_text(
                        "Generate at the size above, enlarge, and repaint at the larger size: \
                         the composition of the model's own size, the detail of the larger one",
                    )
                    .changed();
                let h = &mut s.hires;
                requeue |= released(
                    &ui.add(
                        Slider::new(&mut h.scale, 1.05..=crate::diffusion::hires::MAX_SCALE)
                            .fixed_decimals(2)
                            .text("Upscale by"),
                    ),
                );
                h.scale = hundredths(h.scale);
                requeue |= released(
                    &ui.add(Slider::new(&mut h.steps, 0..=MAX_STEPS).text("Hires steps"))
                        .on_hover_text("0: as many as the first pass"),
                );
                requeue |= released(
                    &ui.add(
                        Slider::new(&mut h.denoise, 0.01..=1.0)
                            .fixed_decimals(2)
                            .text("Denoising strength"),
                    )
                    .on_hover_text("How much the enlarged image is repainted (latent: 0.5–0.7)"),
                );
                h.denoise = hundredths(h.denoise);
                egui::ComboBox::from_label("Upscaler")
                    .selected_text(h.upscaler.a1111_name())
                    .show_ui(ui, |ui| {
                        for u in crate::diffusion::Upscaler::ALL {
                            requeue |= ui
                                .selectable_value(&mut h.upscaler, u, u.a1111_name())
                                .changed();
                        }
                    });
                let (w, ht) = h.size(s.width, s.height, multiple);
                ui.weak(format!("Final size {w}×{ht}"));
            })
            .response
            .on_disabled_hover_text("For text to image: clear the starting picture first");
        });
    if requeue && studio.settings.live && studio.settings.hires_on {
        studio.push(Action::LiveRequeue);
    }
}

/// A slider's value to two decimals, exactly as typed: 0.7, not 0.7000000000000001 (which
/// stepping by 0.01 gives, and which the PNG would then record).
fn hundredths(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// SDXL's extras, folded away: the second text encoder's prompts and the micro-conditioning
/// (ComfyUI's CLIPTextEncodeSDXL fields). Empty prompts and "same as the image" sizes are
/// diffusers' defaults.
fn sdxl_fields(ui: &mut egui::Ui, studio: &mut Studio) {
    let mut requeue = false;
    let s = &mut studio.settings;
    let (width, height) = (s.width, s.height);
    egui::CollapsingHeader::new("SDXL: second prompt, size conditioning")
        .id_salt("sdxl")
        .show(ui, |ui| {
            let (p2, n2) = (&mut s.prompt_2, &mut s.negative_prompt_2);
            prompt_field(
                ui,
                "Prompt 2 (OpenCLIP bigG)",
                p2,
                "Same as the prompt",
                2,
                None,
            );
            prompt_field(
                ui,
                "Negative prompt 2",
                n2,
                "Same as the negative prompt",
                1,
                None,
            );
            let c = &mut s.size_cond;
            requeue |= size_field(ui, "Original size", &mut c.original, (width, height));
            ui.horizontal(|ui| {
                ui.label("Crop from");
                let (left, top) = &mut c.crop;
                let max = crate::diffusion::pipeline::MAX_SIZE_COND;
                requeue |=
                    released(&ui.add(egui::DragValue::new(left).range(0..=max).prefix("left ")));
                requeue |=
                    released(&ui.add(egui::DragValue::new(top).range(0..=max).prefix("top ")));
            })
            .response
            .on_hover_text(
                "Where SDXL is told the image was cropped; 0, 0 keeps the subject whole",
            );
            requeue |= size_field(ui, "Target size", &mut c.target, (width, height));
        });
    if requeue && s.live {
        studio.push(Action::LiveRequeue);
    }
}

/// An optional (width, height): "same as the image", or two values. True when a value was
/// let go (the live re-queue moment).
fn size_field(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut Option<(usize, usize)>,
    image: (usize, usize),
) -> bool {
    let mut changed = false;
    ui.horizontal(|ui| {
        let mut own = value.is_none();
        if ui
            .checkbox(&mut own, format!("{label}: the image's"))
            .changed()
        {
            *value = if own { None } else { Some(image) };
            changed = true;
        }
        if let Some((w, h)) = value {
            let max = crate::diffusion::pipeline::MAX_SIZE_COND;
            changed |= released(&ui.add(egui::DragValue::new(w).range(1..=max).suffix(" w")));
            changed |= released(&ui.add(egui::DragValue::new(h).range(1..=max).suffix(" h")));
        }
    });
    changed
}

/// True when a slider-like control was let go (or changed by keyboard / typing): the moment
/// live mode re-queues, so a sweep queues one job, not one per pixel dragged.
fn released(r: &Response) -> bool {
    r.drag_stopped() || (r.changed() && !r.dragged())
}

fn sliders(ui: &mut egui::Ui, studio: &mut Studio) {
    let m = studio.size_multiple();
    let mut requeue = false;
    let studio_sampler = studio.sampler();
    let s = &mut studio.settings;
    // Each slider carries its own label, which is also its accessible name.
    requeue |= released(&ui.add(Slider::new(&mut s.steps, 1..=MAX_STEPS).text("Steps")));
    requeue |= released(
        &ui.add(
            Slider::new(&mut s.cfg_scale, 0.0..=MAX_CFG)
                .step_by(0.5)
                .text("CFG scale"),
        ),
    );
    requeue |= released(&ui.add(size_slider(&mut s.width, m, "Width")));
    requeue |= released(&ui.add(size_slider(&mut s.height, m, "Height")));
    ui.horizontal(|ui| {
        let label = ui.label("Seed");
        requeue |= released(
            &ui.add(egui::DragValue::new(&mut s.seed).speed(1.0))
                .labelled_by(label.id),
        );
        if ui
            .button("Random")
            .on_hover_text("New random seed")
            .clicked()
        {
            s.seed = u64::from(rand::random::<u32>());
            requeue = true;
        }
        let icon = if s.seed_locked { "Locked" } else { "Lock" };
        ui.toggle_value(&mut s.seed_locked, icon).on_hover_text(
            "Locked: Generate keeps this seed. Unlocked: each Generate draws a new one.",
        );
    });
    sampler_combo(ui, s);
    spacing_combo(ui, s, studio_sampler);
    requeue |= released(
        &ui.add(Slider::new(&mut s.clip_skip, 1..=12).text("Clip skip"))
            .on_hover_text(
                "Which text-encoder layer the prompt is read from: 1 = the last; 2 = the one                  before, which many anime SD 1.x models were trained with",
            ),
    );
    ui.add(Slider::new(&mut s.batch_count, 1..=16).text("Batch count"))
        .on_hover_text("Images per Generate, with consecutive seeds");
    ui.add_space(4.0);
    ui.checkbox(&mut s.live, "Live")
        .on_hover_text("Re-generate with the same seed whenever a slider is released");
    if requeue && studio.settings.live {
        studio.push(Action::LiveRequeue);
    }
}

fn size_slider<'a>(v: &'a mut usize, multiple: usize, label: &str) -> Slider<'a> {
    Slider::new(v, multiple..=MAX_SIDE.max(multiple))
        .step_by(multiple as f64)
        .suffix(" px")
        .text(label)
}

fn sampler_combo(ui: &mut egui::Ui, s: &mut crate::settings::Settings) {
    let current = s.sampler.as_deref().and_then(|n| n.parse::<Sampler>().ok());
    let picked = optional_combo(
        ui,
        "Sampler",
        "Model default",
        current,
        &Sampler::ALL,
        |x| x.a1111_name(),
    );
    if let Some(choice) = picked {
        s.sampler = choice.map(|x| x.cli_name().to_string());
    }
}

/// The sampler's timestep spacing: "Auto" is the sampler's default (or, for the model's own
/// sampler, what its scheduler file says: SD-Turbo's trailing). Greyed out for samplers that set
/// their own steps.
fn spacing_combo(ui: &mut egui::Ui, s: &mut crate::settings::Settings, sampler: Sampler) {
    let current = s.spacing.as_deref().and_then(|n| n.parse::<Spacing>().ok());
    let picked = ui.add_enabled_ui(sampler.takes_spacing(), |ui| {
        optional_combo(ui, "Spacing", "Auto", current, &Spacing::ALL, |x| x.name())
    });
    picked
        .response
        .on_hover_text(
            "How the steps are spread over the noise schedule. Trailing: for few-step models \
             (SD-Turbo: Euler a, 1–4 steps, CFG 0). Auto: the sampler's default, or the model's own.",
        )
        .on_disabled_hover_text("This sampler sets its own steps");
    if let Some(choice) = picked.inner {
        s.spacing = choice.map(|x| x.name().to_string());
    }
}

/// A combo box over `options` plus an automatic entry (`None`); returns the entry clicked, if
/// any: `Some(None)` for the automatic one.
fn optional_combo<T: Copy + PartialEq>(
    ui: &mut egui::Ui,
    label: &str,
    auto: &'static str,
    current: Option<T>,
    options: &[T],
    name: impl Fn(T) -> &'static str,
) -> Option<Option<T>> {
    let mut picked = None;
    egui::ComboBox::from_label(label)
        .selected_text(current.map_or(auto, &name))
        .show_ui(ui, |ui| {
            if ui.selectable_label(current.is_none(), auto).clicked() {
                picked = Some(None);
            }
            for &option in options {
                if ui
                    .selectable_label(current == Some(option), name(option))
                    .clicked()
                {
                    picked = Some(Some(option));
                }
            }
        });
    picked
}

fn generate_button(ui: &mut egui::Ui, studio: &mut Studio) {
    let size = egui::vec2(ui.available_width(), 36.0);
    if studio.busy() {
        let b = egui::Button::new(RichText::new("Cancel").size(16.0)).min_size(size);
        if ui.add(b).on_hover_text("Stop now (Esc)").clicked() {
            studio.push(Action::CancelAll);
        }
    } else {
        let ready = studio.model.is_ready();
        let b = egui::Button::new(RichText::new("Generate").size(16.0).strong())
            .fill(super::theme::accent(ui))
            .min_size(size);
        let r = ui
            .add_enabled(ready, b)
            .on_hover_text("Ctrl+Enter")
            .on_disabled_hover_text("Choose a model first");
        if r.clicked() {
            studio.push(Action::Generate);
        }
    }
}
