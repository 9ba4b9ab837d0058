//! The C4 cleaning pipeline for Common Crawl WET files.
