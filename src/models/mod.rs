//! Model files on disk and the candle modules built from them.

pub mod tokenizer;
