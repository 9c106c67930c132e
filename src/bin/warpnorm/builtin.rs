//! The flax / keras anchor fixtures of `tests/fixtures`, built into the binary so that
//! `warpnorm verify --builtin` checks a machine that has the command but no checkout.
//! Stored as they are (JSON text): compressing them would need a decompressor in the
//! binary for about a megabyte and a half.

/// Includes each named fixture as `("builtin:<file name>", text)`.
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        pub const FIXTURES: &[(&str, &str)] = &[
            $((
                concat!("builtin:", $name),
                include_str!(concat!("../../../tests/fixtures/", $name)),
            ),)*
        ];
    };
}

fixtures![
    "flax_ln_channels_first.json",
    "flax_ln_d1024.json",
    "flax_ln_d3.json",
    "flax_ln_d7.json",
    "flax_ln_default_3d_d33.json",
    "flax_ln_default_d32.json",
    "flax_ln_eps_1e-2_d7.json",
    "flax_ln_eps_1e-5_d257.json",
    "flax_ln_feat_outside_red.json",
    "flax_ln_mask_rows_partial.json",
    "flax_ln_mask_slow_variance.json",
    "flax_ln_no_bias_d33.json",
    "flax_ln_no_scale_d33.json",
    "flax_ln_no_scale_no_bias_d33.json",
    "flax_ln_red12_feat12.json",
    "flax_ln_red12_feat21.json",
    "flax_ln_red12_feat_last.json",
    "flax_ln_red_neg_dup.json",
    "flax_ln_sharded_w2.json",
    "flax_ln_sharded_w2_d7.json",
    "flax_ln_sharded_w4.json",
    "flax_ln_sharded_w4_groups_pairs.json",
    "flax_ln_sharded_w4_mask.json",
    "flax_ln_sharded_w4_mask_slow_variance.json",
    "flax_ln_sharded_w4_slow_variance.json",
    "flax_ln_sharded_w4_x_bf16.json",
    "flax_ln_sharded_w8.json",
    "flax_ln_sharded_w8_groups_halves.json",
    "flax_ln_sharded_w8_groups_halves_mask.json",
    "flax_ln_sharded_w8_groups_halves_slow_variance.json",
    "flax_ln_sharded_w8_groups_strided.json",
    "flax_ln_slow_variance_d100.json",
    "flax_ln_slow_variance_offset_d257.json",
    "flax_ln_x_bf16_dtype_bf16_params_bf16.json",
    "flax_ln_x_bf16_no_params.json",
    "flax_ln_x_bf16_params_f32.json",
    "flax_ln_x_f16_dtype_f16.json",
    "flax_ln_x_f16_params_bf16.json",
    "flax_ln_x_f32_dtype_bf16.json",
    "flax_rms_d257.json",
    "flax_rms_default_d32.json",
    "flax_rms_mask_rows_partial.json",
    "flax_rms_no_scale.json",
    "flax_rms_red12.json",
    "flax_rms_sharded_w4.json",
    "flax_rms_sharded_w4_groups_pairs.json",
    "flax_rms_sharded_w4_groups_pairs_mask.json",
    "flax_rms_x_bf16_params_f32.json",
    "keras_ln_axis_12.json",
    "keras_ln_axis_1_rank3.json",
    "keras_ln_axis_21.json",
    "keras_ln_axis_mixed_sign_quirk.json",
    "keras_ln_axis_neg.json",
    "keras_ln_bfloat16_x_bf16.json",
    "keras_ln_d1024.json",
    "keras_ln_default_d32.json",
    "keras_ln_eps_1e-5_d100.json",
    "keras_ln_float16_x_f16.json",
    "keras_ln_float32_x_f16.json",
    "keras_ln_mixed_bfloat16_x_bf16.json",
    "keras_ln_mixed_bfloat16_x_f32.json",
    "keras_ln_mixed_float16_x_f16.json",
    "keras_ln_no_center.json",
    "keras_ln_no_center_no_scale.json",
    "keras_ln_no_scale.json",
    "keras_ln_rms_scaling.json",
    "keras_ln_rms_scaling_no_scale.json",
];

#[cfg(test)]
mod tests {
    use super::FIXTURES;

    /// A fixture added to or removed from the folder must be added to or removed from
    /// the list above.
    #[test]
    fn every_fixture_file_is_built_in() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("the fixtures folder")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".json"))
            .collect();
        on_disk.sort();
        let built_in: Vec<&str> = FIXTURES
            .iter()
            .map(|(name, _)| name.trim_start_matches("builtin:"))
            .collect();
        assert_eq!(built_in, on_disk);
    }
}
