"""Data: the offline dataset, Inception preprocessing and the input pipelines.

The public API is `datasets` (DatasetInfo, get_dataset_info, with_holdout, and `pipeline`,
the TensorFlow reader `input_pipeline` with create_train_iterator and create_eval_iterator)
and `synthetic`. Only this package imports tensorflow_datasets, and only its readers of
TensorFlow formats import TensorFlow.
"""
