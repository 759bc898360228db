"""The JSON files of a tuner project: whole writes, reads that name the file.

KerasTuner writes `oracle.json`, each `trial_*/trial.json` and the tuner's
`<tuner_id>.json` by truncating the file and writing it again, so a process
killed during a write leaves a cut file, and a damaged file later fails to
reload with a bare `json.JSONDecodeError` that does not say which file. Here
a local file is written to a temporary file beside it and renamed over the
old one (a rename within a directory is atomic on POSIX and Windows), so
the file always holds either its previous or its new content; and reading
raises `ProjectFileError` naming the file.

Local files need no TensorFlow, on any backend; remote ones (`gs://...`)
are read and written through `tf.io.gfile`, imported only for them (where
TensorFlow is not installed, a remote path raises a `ValueError` that says
so).
"""

import glob
import json
import os
import uuid

from keras_batchtune.backend import tf_gfile

TRIAL_FILE_PATTERN = os.path.join("trial_*", "trial.json")
"""The trial files of a project, relative to its directory."""


class ProjectFileError(ValueError):
    """A file of a tuner project is missing, unreadable or damaged.

    Example:

    ```python
    try:
        tuner = keras_batchtune.BatchTuner(build, directory="runs")
    except keras_batchtune.ProjectFileError as error:
        print(error.path)
    ```

    Attributes:
        path: The file, a string.
    """

    def __init__(self, path, problem):
        self.path = str(path)
        super().__init__(
            f"The tuner project file {self.path} {problem}. Nothing was "
            "reloaded. Restore the file (for example from a backup), delete "
            "its trial directory to run that trial again, or start a new "
            "project with `overwrite=True` or another `project_name`."
        )


def _is_local(path):
    return "://" not in str(path)


def _gfile(path):
    """TensorFlow's `tf.io.gfile`, for a remote path; a clear error without."""
    return tf_gfile.gfile(path)


def _open(path, mode):
    if _is_local(path):
        return open(path, mode)
    return _gfile(path).GFile(path, mode)


def write_json(path, state):
    """Writes a JSON-serialisable state to a file as one whole.

    A local file is written beside its final name and renamed over it, so a
    process killed mid-write leaves the previous content. Remote files
    (`gs://...`) are written through `tf.io.gfile`, where an object appears
    whole when it is closed.

    Example:

    ```python
    write_json("runs/project/oracle.json", oracle.get_state())
    ```

    Args:
        path: The file name.
        state: A JSON-serialisable object.

    Returns:
        The JSON text written (as `keras_tuner`'s `Stateful.save` returns).
    """
    text = json.dumps(state)
    path = str(path)
    if not _is_local(path):
        with _open(path, "w") as file:
            file.write(text)
        return text
    # A name of its own per writer; created like any file (the umask's
    # permissions, not a private temporary file's 0600).
    temporary = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(temporary, "x") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return text


def read_json(path):
    """Reads a project's JSON file whose top level is an object.

    Example:

    ```python
    state = read_json("runs/project/oracle.json")
    ```

    Args:
        path: The file name.

    Returns:
        The decoded dict.

    Raises:
        ProjectFileError: naming `path`, if it cannot be read, is not valid
            JSON, or does not hold a JSON object.
    """
    path = str(path)
    try:
        with _open(path, "rb") as file:
            content = file.read()
    except Exception as error:  # OSError, or tf.errors.OpError for remote
        raise ProjectFileError(path, f"cannot be read ({error})") from error
    try:
        state = json.loads(content)
    except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
        raise ProjectFileError(
            path, f"is damaged: it is not valid JSON ({error})"
        ) from error
    if not isinstance(state, dict):
        raise ProjectFileError(
            path,
            "is damaged: it holds a JSON "
            f"{type(state).__name__}, not an object",
        )
    return state


def trial_files(project_dir):
    """Lists the `trial_*/trial.json` files of a project directory.

    Args:
        project_dir: The project directory (`directory/project_name`).

    Returns:
        The sorted list of file names.
    """
    project_dir = str(project_dir)
    if _is_local(project_dir):
        pattern = os.path.join(glob.escape(project_dir), TRIAL_FILE_PATTERN)
        return sorted(glob.glob(pattern))
    pattern = os.path.join(project_dir, TRIAL_FILE_PATTERN)
    return sorted(_gfile(pattern).glob(pattern))
