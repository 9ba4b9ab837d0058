//! Training loop, Adafactor and AdamW, schedules, checkpoints and resume.
