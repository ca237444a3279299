"""Measuring tools: replay bench, soak, backend and session-option timings, the face_recognition comparison, reports
and generated tables."""
