//! Faces: detect, align, recognise.
