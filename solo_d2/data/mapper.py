"""The dataset mapper of solo_d2's train and test loaders.

detectron2's ``DatasetMapper`` reads each image with PIL; a truncated or corrupt file
raises ``OSError: image file is truncated`` without saying which file, possibly hours
into training. :class:`FileNamingDatasetMapper` is ``DatasetMapper`` with the file names
added: a file that cannot be read raises :class:`ImageReadError` (an ``OSError``) naming
``file_name`` (and ``sem_seg_file_name``); other errors while mapping an item are
logged with the item's file name and re-raised unchanged.
"""

import logging

from detectron2.data import DatasetMapper

__all__ = ["FileNamingDatasetMapper", "ImageReadError"]

logger = logging.getLogger(__name__)


class ImageReadError(OSError):
    """An image (or semantic label) file of a dataset item could not be read."""


def _describe(dataset_dict):
    names = ["file_name={}".format(dataset_dict.get("file_name"))]
    if dataset_dict.get("sem_seg_file_name"):
        names.append("sem_seg_file_name={}".format(dataset_dict["sem_seg_file_name"]))
    return ", ".join(names)


class FileNamingDatasetMapper(DatasetMapper):
    """``DatasetMapper`` whose errors name the dataset item's files."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:  # PIL: truncated / unidentified / broken PNG / missing
            raise ImageReadError(
                "Cannot read the image of dataset item {}: {}: {}. The file is missing, "
                "truncated or corrupt; re-download or remove it (tools/train_net.py "
                "--check-images all, or solo_d2.data.check_dataset(name, check_images='all'), "
                "decodes every image before training).".format(
                    _describe(dataset_dict), type(e).__name__, e
                )
            ) from e
        except Exception:
            logger.error("Error while mapping dataset item %s", _describe(dataset_dict))
            raise
