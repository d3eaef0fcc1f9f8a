"""The texture model: texture features -> standardisation -> a linear (or RBF-SVM) classifier ->
temperature-scaled softmax.

A classical classifier that needs no GPU and trains in minutes at most: on ~1k real crops it is competitive
with deep networks trained from scratch (issue 16), and its probabilities feed the ensemble.

Choices (measured by grouped CV of the real development crops, benchmarks/bench_texture.py):
- by default ("logistic+lda") the sum of two linear heads on the same standardised features: a
  multinomial logistic regression (balanced class weights) and a shrinkage LDA (equal priors),
  each scaled by the spread of its training scores; the sum is one linear map, stored as such.
  The pair beat logistic alone by 1-2 points of accuracy; "logistic" alone and an RBF SVM ("svm",
  0.61 vs 0.66 for logistic) stay available. C and the LDA shrinkage (the SVM's C and gamma) are
  chosen by grouped CV when `fit` gets `groups`, else the defaults below;
- all the labelled data trains (`pool_validation`, on by default): the validation images join the
  training images, the hyper-parameters are chosen by grouped CV over the pool, the temperature is
  fitted on the pool's grouped out-of-fold scores, then the head is fitted on the whole pool. The
  validation images' own out-of-fold probabilities (`validation_oof_`) are what the run's ensemble
  and recommended-classifier choice get for this model, since its plain validation predictions are
  no longer unseen (training/texture_fit.py, evaluation/ensemble.py). +2-6 points of accuracy on
  4 fold draws of the development crops (~600 -> ~750 training crops);
- probabilities: the classifier's scores (logits, or the SVM's summed one-vs-one decision values)
  through a softmax whose temperature is fitted on out-of-fold scores (or, with
  `pool_validation=False`, on the validation split);
- the classifier runs with one BLAS/OpenMP thread: on 2 busy cores multi-threaded BLAS made one
  grouped search take minutes instead of seconds;
- saved as plain arrays (`np.savez`, read with allow_pickle=False) + JSON, written atomically:
  loading runs no code. Predictions are evaluated in NumPy (`linear.LinearSoftmax`,
  `svm.RbfSvm`), so a loaded model predicts exactly what the fitted one did.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np

from virion.atomic import atomic_write, atomic_write_text
from virion.errors import VirionError
from virion.models.texture import features as feat
from virion.models.texture.calibration import expected_calibration_error, fit_temperature, log_loss, softmax
from virion.models.texture.linear import LinearSoftmax
from virion.models.texture.svm import RbfSvm

FORMAT = "virion-texture"
FORMAT_VERSION = 1
JSON_NAME = "texture_model.json"
NPZ_NAME = "texture_model.npz"
# Below this many images predict_proba computes features without touching the disk cache (serve).
CACHE_MIN_IMAGES = 64
# Beside a model trained with its run's validation images: their out-of-fold probabilities.
VALIDATION_OOF_FILE = "validation_oof.json"
CLASSIFIERS = ("logistic+lda", "logistic", "svm")
# Grids searched by grouped CV on the training data (SVM gamma as a multiple of 1 / n_features),
# and the values used without groups.
LOGISTIC_C_GRID = (0.03, 0.1, 0.3)
LOGISTIC_DEFAULT_C = 0.1
LOGISTIC_MAX_ITER = 2000
# The pair's grid: C of the logistic head x shrinkage of the LDA head; defaults without groups are
# the values the grouped search picked most often on the development crops.
PAIR_C_GRID = (0.03, 0.1, 0.3)
PAIR_SHRINKAGE_GRID = (0.1, 0.3, 0.7)
PAIR_DEFAULT_C = 0.03
PAIR_DEFAULT_SHRINKAGE = 0.1
SVM_C_GRID = (1.0, 3.0, 10.0, 30.0)
SVM_GAMMA_GRID = (0.1, 0.3, 1.0)
SVM_DEFAULT_C = 10.0
SVM_DEFAULT_GAMMA = 0.3
CV_FOLDS = 3


class TextureModel:
    """sklearn-like texture classifier over uint8 (N, S, S) crops (S = `input_size`, 256 by default).

    Args:
        classifier: "logistic+lda" (logistic regression + shrinkage LDA, summed), "logistic"
            (multinomial logistic regression) or "svm" (RBF SVM).
        C: inverse regularisation, or "auto" (grouped CV on the training data when `fit` gets
            `groups`, else the measured default).
        gamma: the SVM's RBF width as a multiple of 1 / n_features, or "auto" (as C).
        shrinkage: the LDA head's covariance shrinkage in [0, 1], or "auto" (as C).
        pool_validation: train on training + validation images (see the module docstring); the
            validation images' out-of-fold probabilities are kept in `validation_oof_`.
        refit: (only with `pool_validation=False`) after calibrating on the validation images,
            train again on training + validation with the same settings and temperature.
        input_size: crop side the model expects (decoding: `input_size`, `stretch`).
        stretch: the decode percentile stretch the images were made with (kept in metadata).
        cache: keep features on disk (`features.cached_features`) so a second fit does not recompute.
        workers: feature threads (default: the CPUs this process may use).
    """

    def __init__(
        self,
        *,
        classifier: str = "logistic+lda",
        C: float | str = "auto",
        gamma: float | str = "auto",
        shrinkage: float | str = "auto",
        pool_validation: bool = True,
        input_size: int = 256,
        stretch: tuple[float, float] | None = (0.5, 99.5),
        cache: bool = True,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        refit: bool = False,
        seed: int = 0,
    ):
        if classifier not in CLASSIFIERS:
            raise VirionError(f"texture model: classifier {classifier!r} is not one of {', '.join(CLASSIFIERS)}")
        self.classifier = classifier
        self.refit = bool(refit)
        self.C = C
        self.gamma = gamma
        self.shrinkage = shrinkage
        self.pool_validation = bool(pool_validation)
        self.input_size = int(input_size)
        self.stretch = tuple(stretch) if stretch is not None else None
        self.cache = cache
        self.cache_dir = cache_dir
        self.workers = workers
        self.seed = seed

    def get_params(self) -> dict:
        return {
            "classifier": self.classifier,
            "refit": self.refit,
            "C": self.C,
            "gamma": self.gamma,
            "shrinkage": self.shrinkage,
            "pool_validation": self.pool_validation,
            "input_size": self.input_size,
            "stretch": list(self.stretch) if self.stretch else None,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------------------ features

    def _check_images(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 4 and images.shape[-1] in (1, 3):
            images = images[..., 0]  # virion's RGB is grayscale replicated
        if images.ndim != 3 or images.dtype not in (np.uint8, np.uint16):
            raise VirionError(
                f"texture model: images must be uint8 grayscale of shape (N, S, S), got {images.dtype} {images.shape}"
            )
        if images.shape[1:] != (self.input_size, self.input_size):
            raise VirionError(
                f"texture model: images are {images.shape[1]}x{images.shape[2]} px, the model expects "
                f"{self.input_size}x{self.input_size}; decode them at size {self.input_size}"
            )
        return images

    def features(self, images, *, progress: bool = False) -> np.ndarray:
        """Texture features of `images` (cached on disk for large batches when `cache` is on)."""
        images = self._check_images(images)
        if self.cache and len(images) >= CACHE_MIN_IMAGES:
            return feat.cached_features(images, cache_dir=self.cache_dir, workers=self.workers, progress=progress)
        return feat.texture_features(images, workers=self.workers, progress=progress)

    # ------------------------------------------------------------------------------ fit

    def fit(
        self,
        images,
        labels,
        *,
        class_names,
        val_images=None,
        val_labels=None,
        groups=None,
        val_groups=None,
        progress: bool = True,
    ) -> TextureModel:
        """Train on uint8 (N, S, S) `images` with integer `labels` (indices into `class_names`).

        `groups` (one micrograph/session id per image), when given, makes the choice of C (and
        gamma or shrinkage) a grouped cross-validation. With `pool_validation` (the default) the
        validation images (`val_groups`: their groups) join the training images for everything:
        search, out-of-fold temperature and the final fit; `validation_oof_` then holds their
        out-of-fold probabilities (N_val, C). Without it the temperature is fitted on the validation
        images when given (else on out-of-fold training scores), and `refit` trains again on
        training + validation with the same settings and temperature.
        """
        from threadpoolctl import threadpool_limits

        self.class_names = [str(c) for c in class_names]
        labels = self._label_indices(labels)
        x = self.features(images, progress=progress).astype(np.float64)
        if len(x) != len(labels):
            raise VirionError(f"texture model: {len(x)} images but {len(labels)} labels")
        vx = vy = None
        if val_images is not None and val_labels is not None and len(val_labels):
            vy = self._label_indices(val_labels)
            vx = self.features(val_images, progress=progress).astype(np.float64)
            if len(vx) != len(vy):
                raise VirionError(f"texture model: {len(vx)} validation images but {len(vy)} labels")
        if groups is not None:
            groups = np.asarray(groups).astype(str)
            if len(groups) != len(labels):
                raise VirionError(f"texture model: {len(groups)} groups for {len(labels)} images")
        n_train = len(labels)
        self.pooled_ = self.pool_validation and vx is not None
        if self.pooled_:
            x, labels = np.vstack([x, vx]), np.concatenate([labels, vy])
            if groups is not None and val_groups is not None:
                val_groups = np.asarray(val_groups).astype(str)
                if len(val_groups) != len(vy):
                    raise VirionError(f"texture model: {len(val_groups)} validation groups for {len(vy)} images")
                groups = np.concatenate([groups, val_groups])
            else:
                groups = None  # images of one micrograph could sit on both sides of a fold: no grouped search
        if len(np.unique(labels)) < 2:
            raise VirionError("texture model: the training images hold fewer than two classes; give at least two")
        with threadpool_limits(limits=1):
            self._fit_arrays(x, labels, groups, vx, vy, n_train)

        # Mean radial profile per class (for explain_profile).
        radial = self._radial_columns()
        self.class_profiles_ = np.full((len(self.class_names), radial.stop - radial.start), np.nan)
        y = np.searchsorted(self.trained_classes, labels)
        for k, c_index in enumerate(self.trained_classes):
            self.class_profiles_[c_index] = x[y == k, radial].mean(axis=0)
        self.n_features_ = int(x.shape[1])
        return self

    def _fit_arrays(self, x, labels, groups, vx, vy, n_train: int) -> None:
        """Search, head, temperature (and the pooled validation rows' out-of-fold probabilities)."""
        from sklearn.model_selection import GroupKFold, StratifiedKFold

        z, y = self._standardise_fit(x, labels)
        # Folds for the hyper-parameter search and the out-of-fold calibration.
        splitter = None
        if groups is not None and len(np.unique(groups)) >= CV_FOLDS:
            splitter = list(GroupKFold(n_splits=CV_FOLDS).split(z, y, groups))
        self.search_ = {}
        c_grid, g_grid = self._grids()
        if len(c_grid) * len(g_grid) > 1 and splitter is not None:
            self.C_, self.gamma_ = self._search(z, y, splitter, c_grid, g_grid)
        else:
            self.C_, self.gamma_ = self._defaults()
        self.head_ = self._train_head(z, y, self.C_, self.gamma_)

        # Calibration: one temperature, on scores of images the classifier did not train on.
        self.calibration_ = {}
        self.validation_oof_ = None
        self.validation_oof_fair_ = None
        if vx is not None and not self.pooled_:
            keep = np.isin(vy, self.trained_classes)
            vz = (vx[keep] - self.mean_) / self.scale_
            scores, truth = self.head_.class_scores(vz), np.searchsorted(self.trained_classes, vy[keep])
            source = "validation"
        else:
            grouped = splitter is not None
            if not grouped:
                k = max(2, min(CV_FOLDS, int(np.bincount(y).min())))
                splitter = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed).split(z, y))
            scores, seen = self._out_of_fold_scores(z, y, splitter)
            truth = y
            source = "out-of-fold scores of the training" + (" + validation" if self.pooled_ else "") + " images"
            source += " (grouped)" if grouped else " (not grouped)"
            source += "; images whose class was missing from their fold's training side left out"
        if self.pooled_:
            oof = scores[n_train:]
        if vx is None or self.pooled_:
            # An image whose class its fold's classifier never saw cannot be scored fairly: it would pull
            # the temperature to infinity (grouped folds of a class with one or two micrographs).
            scores, truth = scores[seen], y[seen]
        self.temperature_ = fit_temperature(scores, truth) if len(truth) else 1.0
        if len(truth):
            before, after = softmax(scores), softmax(scores, self.temperature_)
            self.calibration_ = {
                "fitted_on": source,
                "images": int(len(truth)),
                "temperature": self.temperature_,
                "log_loss_before": log_loss(before, truth),
                "log_loss": log_loss(after, truth),
                "ece_before": expected_calibration_error(before, truth),
                "ece": expected_calibration_error(after, truth),
                "accuracy": float((after.argmax(1) == truth).mean()),
            }
        if self.pooled_:
            self.validation_oof_ = np.zeros((len(y) - n_train, len(self.class_names)))
            self.validation_oof_[:, self.trained_classes] = softmax(oof, self.temperature_)
            # False where the image's out-of-fold classifier never saw its class: no fair prediction
            # (its true class scores ~0), so it is left out of the run's validation comparisons.
            self.validation_oof_fair_ = seen[n_train:].copy()
        self.refitted_ = False
        if self.refit and vx is not None and not self.pooled_:
            x, labels = np.vstack([x, vx]), np.concatenate([labels, vy])
            z, y = self._standardise_fit(x, labels)
            self.head_ = self._train_head(z, y, self.C_, self.gamma_)
            self.refitted_ = True

    def _standardise_fit(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Learn the scaler and the trained classes; standardised features and labels 0..k-1."""
        self.trained_classes = np.unique(labels).astype(np.int64)
        self.mean_ = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0)
        return (x - self.mean_) / self.scale_, np.searchsorted(self.trained_classes, labels)

    def _grids(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.classifier == "svm":
            c_grid = SVM_C_GRID if self.C == "auto" else (float(self.C),)
            g_grid = SVM_GAMMA_GRID if self.gamma == "auto" else (float(self.gamma),)
            return c_grid, g_grid
        if self.classifier == "logistic+lda":
            c_grid = PAIR_C_GRID if self.C == "auto" else (float(self.C),)
            s_grid = PAIR_SHRINKAGE_GRID if self.shrinkage == "auto" else (float(self.shrinkage),)
            return c_grid, s_grid
        return (LOGISTIC_C_GRID if self.C == "auto" else (float(self.C),)), (0.0,)

    def _defaults(self) -> tuple[float, float]:
        if self.classifier == "svm":
            return (
                SVM_DEFAULT_C if self.C == "auto" else float(self.C),
                SVM_DEFAULT_GAMMA if self.gamma == "auto" else float(self.gamma),
            )
        if self.classifier == "logistic+lda":
            return (
                PAIR_DEFAULT_C if self.C == "auto" else float(self.C),
                PAIR_DEFAULT_SHRINKAGE if self.shrinkage == "auto" else float(self.shrinkage),
            )
        return (LOGISTIC_DEFAULT_C if self.C == "auto" else float(self.C)), 0.0

    def _label_indices(self, labels) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.dtype.kind in "US":
            index = {c: i for i, c in enumerate(self.class_names)}
            unknown = sorted({str(v) for v in labels.tolist()} - set(index))
            if unknown:
                raise VirionError(f"texture model: labels {unknown[:3]} are not among class_names")
            return np.array([index[str(v)] for v in labels.tolist()], np.int64)
        labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise VirionError(f"texture model: labels must be 0..{len(self.class_names) - 1}")
        return labels

    def _train_head(self, z: np.ndarray, y: np.ndarray, c: float, g: float):
        """The classifier on standardised features `z` with labels 0..k-1 (every one present).

        `g`: the SVM's gamma, or the LDA head's shrinkage for "logistic+lda".
        """
        if self.classifier == "svm":
            from sklearn.svm import SVC

            svc = SVC(C=c, kernel="rbf", gamma=g / z.shape[1], class_weight="balanced", decision_function_shape="ovo")
            svc.fit(z, y)
            return RbfSvm.from_sklearn(svc)
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=LOGISTIC_MAX_ITER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a convergence warning at max_iter: the result is still usable
            lr.fit(z, y)
        logistic = LinearSoftmax.from_sklearn(lr)
        if self.classifier != "logistic+lda":
            return logistic
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        k = int(y.max()) + 1
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=g, priors=np.full(k, 1.0 / k)).fit(z, y)
        return LinearSoftmax.sum([logistic, LinearSoftmax.from_sklearn(lda)], z)

    def _out_of_fold_scores(self, z, y, splitter) -> tuple[np.ndarray, np.ndarray]:
        """Class scores of each training image from a classifier that did not see it, and whether
        that classifier saw the image's class.

        Classes a fold's training side lacks get a very low score.
        """
        k = int(y.max()) + 1
        out = np.zeros((len(y), k))
        seen = np.zeros(len(y), bool)
        for train, test in splitter:
            classes = np.unique(y[train])
            if len(classes) < 2:
                continue
            head = self._train_head(z[train], np.searchsorted(classes, y[train]), self.C_, self.gamma_)
            scores = np.full((len(test), k), -1e3)
            scores[:, classes] = head.class_scores(z[test])
            out[test] = scores
            seen[test] = np.isin(y[test], classes)
        return out, seen

    def _search(self, z, y, splitter, c_grid, g_grid) -> tuple[float, float]:
        """(C, gamma) with the best mean grouped-CV accuracy (ties: the smaller C, then gamma)."""
        results = []
        for c in c_grid:
            for g in g_grid:
                accs = []
                for train, test in splitter:
                    classes = np.unique(y[train])
                    if len(classes) < 2:
                        continue
                    head = self._train_head(z[train], np.searchsorted(classes, y[train]), c, g)
                    pred = classes[head.class_scores(z[test]).argmax(1)]
                    accs.append(float((pred == y[test]).mean()))
                results.append((round(float(np.mean(accs)), 6) if accs else 0.0, -c, -g, c, g))
        best = max(results)
        second = {"svm": ",gamma={:g}", "logistic+lda": ",shrinkage={:g}"}.get(self.classifier, "")
        self.search_ = {f"C={r[3]:g}" + second.format(r[4]): r[0] for r in results}
        return best[3], best[4]

    # ------------------------------------------------------------------------------ predict

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise VirionError("texture model: not trained yet; call fit() or TextureModel.load()")

    def decision_scores(self, images) -> np.ndarray:
        """Uncalibrated class scores (N, number of trained classes)."""
        self._check_fitted()
        z = (self.features(images).astype(np.float64) - self.mean_) / self.scale_
        return self.head_.class_scores(z)

    def predict_proba(self, images, *, batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """Probabilities (N, C) float64 over `class_names`; classes absent from training get 0.

        `batch_size` and `tta` are accepted for the model contract; the features are rotation- and
        flip-invariant already, so test-time augmentation would average identical views.
        """
        self._check_fitted()
        images = self._check_images(images)
        out = np.zeros((len(images), len(self.class_names)))
        if len(images):
            out[:, self.trained_classes] = softmax(self.decision_scores(images), self.temperature_)
        return out

    def predict(self, images) -> np.ndarray:
        """Predicted class indices (into `class_names`)."""
        return self.predict_proba(images).argmax(axis=1)

    def count_params(self) -> int:
        """Number of stored floats (scaler, support vectors, dual coefficients, intercepts, temperature)."""
        self._check_fitted()
        return int(self.mean_.size + self.scale_.size + self.head_.count_params() + 1)

    def _radial_columns(self) -> slice:
        names = feat.feature_names(self.input_size)
        idx = [i for i, n in enumerate(names) if n.startswith("radial[")]
        return slice(idx[0], idx[-1] + 1)

    def explain_profile(self, image) -> dict:
        """The crop's radial intensity profile beside each class's mean profile (for `virion explain`).

        Returns {"radius_px": (R,), "profile": (R,), "class_profiles": {class name: (R,)}, "ring_px"}
        (classes not seen in training are left out).
        """
        self._check_fitted()
        image = self._check_images(np.asarray(image)[None] if np.ndim(image) == 2 else image)[0]
        profile = feat.radial_profile(image)
        radius = (np.arange(len(profile)) + 0.5) * feat.RING_PX
        seen = np.isfinite(self.class_profiles_).all(axis=1)
        classes = {name: self.class_profiles_[i] for i, name in enumerate(self.class_names) if seen[i]}
        return {"radius_px": radius, "profile": profile, "class_profiles": classes, "ring_px": feat.RING_PX}

    # ------------------------------------------------------------------------------ save / load

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean_,
            "scale": self.scale_,
            "trained_classes": self.trained_classes,
            "temperature": np.array(self.temperature_, np.float64),
            "class_profiles": self.class_profiles_,
            **self.head_.arrays(),
        }

    def save(self, folder) -> dict[str, str]:
        """Write texture_model.npz (arrays) then texture_model.json (everything else), each atomically."""
        self._check_fitted()
        folder = Path(folder)
        buffer = io.BytesIO()
        np.savez(buffer, **self._arrays())
        payload = buffer.getvalue()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(payload)

        atomic_write(folder / NPZ_NAME, write)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "feature_version": feat.FEATURE_VERSION,
            "class_names": self.class_names,
            "input_size": self.input_size,
            "stretch": list(self.stretch) if self.stretch else None,
            "params": self.get_params(),
            "C": self.C_,
            "gamma": self.gamma_ if self.classifier == "svm" else 0.0,
            "shrinkage": self.gamma_ if self.classifier == "logistic+lda" else None,
            "n_features": self.n_features_,
            "temperature": self.temperature_,
            "pooled_validation": self.pooled_,
            "refitted": self.refitted_,
            "calibration": self.calibration_,
            "search": self.search_,
            "count_params": self.count_params(),
            "arrays": NPZ_NAME,
            "arrays_sha256": hashlib.sha256(payload).hexdigest(),
        }
        atomic_write_text(folder / JSON_NAME, json.dumps(meta, indent=2) + "\n")
        return {"texture": JSON_NAME, "arrays": NPZ_NAME}

    @classmethod
    def load(cls, path) -> TextureModel:
        """A saved model from its texture_model.json (or the folder holding it); runs no code from the files."""
        path = Path(path)
        json_path = path / JSON_NAME if path.is_dir() else path
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VirionError(f"{json_path}: no texture model here; give the folder TextureModel.save wrote") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VirionError(f"{json_path}: cannot read the texture model ({exc}); retrain it") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise VirionError(f"{json_path}: not a virion texture model file")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise VirionError(f"{json_path}: written by a newer virion (format {meta['format_version']}); upgrade")
        if meta.get("feature_version") != feat.FEATURE_VERSION:
            raise VirionError(
                f"{json_path}: trained on features {meta.get('feature_version')!r}, this virion computes "
                f"{feat.FEATURE_VERSION!r}; retrain the texture model"
            )
        npz_path = json_path.parent / meta.get("arrays", NPZ_NAME)
        try:
            payload = npz_path.read_bytes()
        except OSError as exc:
            raise VirionError(f"{npz_path}: cannot read the texture model's arrays ({exc.strerror or exc})") from None
        if meta.get("arrays_sha256") and hashlib.sha256(payload).hexdigest() != meta["arrays_sha256"]:
            raise VirionError(f"{npz_path}: does not match {json_path.name} (changed or half-copied); copy both again")
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (ValueError, OSError) as exc:
            raise VirionError(f"{npz_path}: not a readable texture model array file ({exc})") from None
        params = dict(meta.get("params") or {})
        stretch = params.get("stretch", meta.get("stretch"))
        model = cls(
            classifier=params.get("classifier", "svm"),
            refit=bool(params.get("refit", False)),
            C=params.get("C", "auto"),
            gamma=params.get("gamma", "auto"),
            shrinkage=params.get("shrinkage", "auto"),
            pool_validation=bool(params.get("pool_validation", False)),
            input_size=int(meta["input_size"]),
            stretch=tuple(stretch) if stretch else None,
            seed=int(params.get("seed", 0)),
        )
        model.class_names = [str(c) for c in meta["class_names"]]
        second = meta.get("shrinkage") if model.classifier == "logistic+lda" else meta["gamma"]
        model.C_, model.gamma_ = float(meta["C"]), float(second)
        model.n_features_ = int(meta["n_features"])
        model.calibration_ = meta.get("calibration") or {}
        model.search_ = meta.get("search") or {}
        model.mean_ = arrays["mean"].astype(np.float64)
        model.scale_ = arrays["scale"].astype(np.float64)
        model.trained_classes = arrays["trained_classes"].astype(np.int64)
        model.temperature_ = float(arrays["temperature"])
        model.class_profiles_ = arrays["class_profiles"].astype(np.float64)
        model.refitted_ = bool(meta.get("refitted", False))
        model.pooled_ = bool(meta.get("pooled_validation", False))
        model.head_ = RbfSvm.from_arrays(arrays) if model.classifier == "svm" else LinearSoftmax.from_arrays(arrays)
        return model


def write_validation_oof(
    folder, files: list[str], probabilities: np.ndarray, class_names: list[str], fair: np.ndarray | None = None
) -> None:
    """Write VALIDATION_OOF_FILE: the validation images' out-of-fold probabilities, one row per file.

    fair: False for images whose out-of-fold classifier never saw their class; they are listed under
    "left_out" instead (a prediction that could not be right says nothing about the model).
    """
    probabilities = np.asarray(probabilities, np.float64)
    if len(files) != len(probabilities):
        raise ValueError(f"{len(files)} files but {len(probabilities)} rows of probabilities")
    fair = np.ones(len(files), bool) if fair is None else np.asarray(fair, bool)
    payload = {
        "what": "out-of-fold probabilities of the validation images (the model itself trained on them)",
        "class_names": [str(c) for c in class_names],
        "files": [str(f) for f, ok in zip(files, fair) if ok],
        "probabilities": probabilities[fair].tolist(),
        "left_out": [str(f) for f, ok in zip(files, fair) if not ok],
        "left_out_why": "their class was missing from the training side of their out-of-fold split",
    }
    atomic_write_text(Path(folder) / VALIDATION_OOF_FILE, json.dumps(payload) + "\n")


def read_validation_oof(folder) -> dict[str, np.ndarray | None] | None:
    """{file: probabilities} from VALIDATION_OOF_FILE in `folder` (None for a file left out: no fair
    prediction), or None when there is no such file."""
    path = Path(folder) / VALIDATION_OOF_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        probs = np.asarray(data["probabilities"], np.float64)
        files = [str(f) for f in data["files"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise VirionError(f"{path}: cannot read the out-of-fold validation probabilities ({exc}); retrain") from None
    if probs.ndim != 2 or len(files) != len(probs):
        raise VirionError(f"{path}: files and probabilities do not match; retrain the texture model")
    left_out = [str(f) for f in data.get("left_out", [])]
    return {**dict.fromkeys(left_out), **dict(zip(files, probs))}
