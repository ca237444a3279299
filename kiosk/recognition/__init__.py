"""Recognition: face detection with landmarks, quality, alignment, embedding, 1:N matching, and the pipeline that
composes them."""
