//! Look and feel: follow the system's dark/light preference, a warm accent for the one
//! primary button, and the app icon.

use egui::{Color32, CornerRadius, Frame, Margin, Stroke, ThemePreference};

/// The window icon (the same artwork the packages install).
pub const ICON_PNG: &[u8] = include_bytes!("../../assets/icon.png");

/// Applied once at start-up.
pub fn apply(ctx: &egui::Context) {
    // egui switches between its dark and light styles as the OS setting changes.
    ctx.set_theme(ThemePreference::System);
    ctx.all_styles_mut(|style| {
        style.spacing.item_spacing = egui::vec2(8.0, 6.0);
        style.spacing.button_padding = egui::vec2(8.0, 4.0);
        style.spacing.slider_width = 150.0;
        style.visuals.widgets.inactive.corner_radius = CornerRadius::same(4);
        style.visuals.widgets.hovered.corner_radius = CornerRadius::same(4);
        style.visuals.widgets.active.corner_radius = CornerRadius::same(4);
    });
}

/// The accent colour of the primary button, readable in both themes.
pub fn accent(ui: &egui::Ui) -> Color32 {
    if ui.visuals().dark_mode {
        Color32::from_rgb(0xb3, 0x5a, 0x1f)
    } else {
        Color32::from_rgb(0xf4, 0xa2, 0x59)
    }
}

/// The box a notice is drawn in: red-tinted for errors.
pub fn notice_frame(ui: &egui::Ui, error: bool) -> Frame {
    let v = ui.visuals();
    let (fill, stroke) = if error {
        (v.extreme_bg_color, Stroke::new(1.5, v.error_fg_color))
    } else {
        (
            v.extreme_bg_color,
            Stroke::new(1.0, v.widgets.noninteractive.bg_stroke.color),
        )
    };
    Frame::new()
        .fill(fill)
        .stroke(stroke)
        .corner_radius(CornerRadius::same(6))
        .inner_margin(Margin::symmetric(10, 6))
        .outer_margin(Margin::symmetric(0, 2))
}
