//! Text encoders: OpenAI CLIP as SD 1.x stores it (`cond_stage_model.transformer.*`, already
//! transformers' names) and OpenCLIP as SD 2.x stores it (`cond_stage_model.model.*`, with
//! fused q/k/v projections) → transformers' `CLIPTextModel`.

use super::{whole, Part, Target};

/// SD 1.x: transformers' names, with the `text_model.` prefix old checkpoints leave out.
pub fn map_clip(key: &str) -> Option<Vec<Target>> {
    if key.ends_with("position_ids") {
        return None;
    }
    let name = if key.starts_with("text_model.") {
        key.to_string()
    } else {
        format!("text_model.{key}")
    };
    Some(whole(name))
}

/// SD 2.x: OpenCLIP's names (without the `cond_stage_model.model.` prefix).
pub fn map_open_clip(key: &str) -> Option<Vec<Target>> {
    const FIXED: [(&str, &str); 3] = [
        (
            "token_embedding.weight",
            "embeddings.token_embedding.weight",
        ),
        (
            "positional_embedding",
            "embeddings.position_embedding.weight",
        ),
        ("ln_final.", "final_layer_norm."),
    ];
    if key == "text_projection" {
        // [width, projection], applied as `x @ P`: transformers' Linear holds Pᵀ.
        return Some(vec![("text_projection.weight".into(), Part::Transposed)]);
    }
    if let Some(name) = FIXED.iter().find_map(|(o, t)| {
        key.strip_prefix(o)
            .map(|tail| format!("text_model.{t}{tail}"))
    }) {
        return Some(whole(name));
    }
    let rest = key.strip_prefix("transformer.resblocks.")?;
    let (i, rest) = super::index_and_rest(rest)?;
    let layer = format!("text_model.encoder.layers.{i}");
    if let Some(kind) = rest.strip_prefix("attn.in_proj_") {
        // weight or bias: q, k and v stacked along the first axis.
        return Some(
            ["q_proj", "k_proj", "v_proj"]
                .iter()
                .enumerate()
                .map(|(index, p)| {
                    (
                        format!("{layer}.self_attn.{p}.{kind}"),
                        Part::Rows { index, of: 3 },
                    )
                })
                .collect(),
        );
    }
    const LAYER: [(&str, &str); 5] = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    LAYER.iter().find_map(|(o, t)| {
        rest.strip_prefix(o)
            .map(|tail| whole(format!("{layer}.{t}{tail}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_clip_names() {
        let v = map_open_clip("transformer.resblocks.3.attn.in_proj_weight").unwrap();
        assert_eq!(
            v,
            vec![
                (
                    "text_model.encoder.layers.3.self_attn.q_proj.weight".to_string(),
                    Part::Rows { index: 0, of: 3 }
                ),
                (
                    "text_model.encoder.layers.3.self_attn.k_proj.weight".to_string(),
                    Part::Rows { index: 1, of: 3 }
                ),
                (
                    "text_model.encoder.layers.3.self_attn.v_proj.weight".to_string(),
                    Part::Rows { index: 2, of: 3 }
                ),
            ]
        );
        for (o, t) in [
            (
                "positional_embedding",
                "text_model.embeddings.position_embedding.weight",
            ),
            ("ln_final.bias", "text_model.final_layer_norm.bias"),
            (
                "transformer.resblocks.0.mlp.c_fc.weight",
                "text_model.encoder.layers.0.mlp.fc1.weight",
            ),
            (
                "transformer.resblocks.22.ln_2.bias",
                "text_model.encoder.layers.22.layer_norm2.bias",
            ),
        ] {
            assert_eq!(map_open_clip(o).unwrap()[0].0, t);
        }
        assert_eq!(
            map_open_clip("text_projection").unwrap(),
            vec![("text_projection.weight".to_string(), Part::Transposed)]
        );
        assert!(map_open_clip("logit_scale").is_none());
    }

    #[test]
    fn clip_names_gain_the_text_model_prefix() {
        assert_eq!(
            map_clip("embeddings.token_embedding.weight").unwrap()[0].0,
            "text_model.embeddings.token_embedding.weight"
        );
        assert_eq!(
            map_clip("text_model.final_layer_norm.weight").unwrap()[0].0,
            "text_model.final_layer_norm.weight"
        );
        assert!(map_clip("text_model.embeddings.position_ids").is_none());
    }
}
