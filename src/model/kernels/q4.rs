//! The fast path's kernel (being written).
