//! What is kept with every image.

pub mod png_meta;
