"""Converters from other projects' formats to ONNX (dlib, MTCNN, FaceNet, MiniFASNet, TFLite face mesh)."""
