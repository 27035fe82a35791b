//! Image input shared by the image functions (faces, captioning).
