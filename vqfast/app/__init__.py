"""What the ``vqfast`` command line runs, as functions: open a folder of images in one
of the known layouts (data), train a method into a run folder (train), score a folder
with a run's scorer into per-image records (score), and draw a report (report). The
benchmark scripts call the same functions."""
