//! Collection: which method runs (select.rs), the thread that reads it
//! (reader.rs), and what existed before it ran (scrape.rs).

pub mod reader;
pub mod scrape;
pub mod select;

pub use reader::Reader;
pub use select::{select, Running, Selection};
