"""What the ``vqfast`` command line runs, as functions: open a folder of images in one
of the known layouts (data), train a method into a run folder (train), score a folder
with a run's scorer into per-image records (score; large images by tiles), predict
single images (predict), export a scorer as one ONNX or torch.export graph (export), and
draw a report or compare scorers on one page (report, compare). The benchmark scripts
call the same functions."""
