"""Grad-CAM (Selvaraju et al., 2017): where in the image the model looked for its answer.

The class score's gradient with respect to the last convolutional feature map, averaged
over space, weights that map's channels; the ReLU of the weighted sum, upsampled to the
image, is the heatmap. Gradients are backend-specific; this is inference code, so it uses
TensorFlow's GradientTape or jax.grad directly (models themselves stay backend-agnostic).
"""

from __future__ import annotations

import weakref

import numpy as np
from PIL import Image

from virion.errors import VirionError

_GLOBAL_POOLING = ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten")
_grad_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _output_rank(layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, RuntimeError):  # unbuilt, shared or multi-output layer
        return None


def find_last_conv_layer(model, preferred: str | None = None) -> str:
    """Name of the last layer with a 4-D (B, h, w, c) output before global pooling.

    `preferred` (e.g. `model_info(name).last_conv_layer` or a name from metadata) wins when
    the model has a layer of that name, so a known architecture never depends on the search.
    """
    if preferred:
        try:
            model.get_layer(preferred)
            return preferred
        except ValueError:
            pass
    layers = list(model.layers)
    pool_at = next(
        (i for i in range(len(layers) - 1, -1, -1) if type(layers[i]).__name__ in _GLOBAL_POOLING), len(layers)
    )
    for layer in reversed(layers[:pool_at]):
        if type(layer).__name__ == "InputLayer":
            continue
        if _output_rank(layer) == 4:
            return layer.name
    raise VirionError(f"model '{model.name}': no layer with a 4-D feature map; Grad-CAM needs a convolutional model")


def _grad_model(model, layer_name: str):
    """Sub-model: input -> (feature map, pre-softmax features or None, output). Cached per model."""
    import keras

    per_model = _grad_models.setdefault(model, {})
    if layer_name not in per_model:
        try:
            conv = model.get_layer(layer_name).output
        except ValueError:
            raise VirionError(
                f"layer '{layer_name}' not in model '{model.name}'; omit the layer to find it automatically"
            ) from None
        last = model.layers[-1]
        activation = getattr(getattr(last, "activation", None), "__name__", "")
        # Explain the pre-softmax score, as in the paper: a saturated softmax has ~zero gradient.
        if type(last).__name__ == "Dense" and activation == "softmax":
            outputs = [conv, last.input, model.output]
        else:
            outputs = [conv, model.output]
        per_model[layer_name] = keras.Model(model.inputs, outputs)
    return per_model[layer_name]


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise VirionError(f"Grad-CAM needs an (H, W) or (H, W, 3) image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    if array.shape[:2] == (height, width):
        return array
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))


def gradcam_with_probabilities(model, image_uint8_rgb, class_index=None, layer_name=None, out_size=None):
    """Like `gradcam`, plus the model's full probability vector; `out_size` (H, W) sizes the heatmap."""
    import keras

    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise VirionError(
            f"Grad-CAM is implemented for the TensorFlow and JAX backends, not '{backend}'; "
            "run with KERAS_BACKEND=tensorflow or jax"
        )
    image = _to_rgb_uint8(image_uint8_rgb)
    height, width = image.shape[:2]
    in_h, in_w = model.inputs[0].shape[1:3]
    x = _resize(image, in_h or height, in_w or width).astype(np.float32)[None]
    if out_size is not None:
        height, width = int(out_size[0]), int(out_size[1])

    layer_name = layer_name or find_last_conv_layer(model)
    if class_index is not None:
        num_classes = int(model.outputs[0].shape[-1])
        if not 0 <= int(class_index) < num_classes:
            raise VirionError(f"class index {class_index} out of range for a model with {num_classes} classes")
    gradients = _conv_and_grads_tf if backend == "tensorflow" else _conv_and_grads_jax
    conv, grads, probs, class_index = gradients(model, layer_name, x, class_index)

    channel_weights = grads.mean(axis=(0, 1))  # global-average-pooled gradients, one per channel
    cam = np.maximum((conv * channel_weights).sum(axis=-1), 0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    heatmap = np.clip(_resize(cam.astype(np.float32), height, width), 0.0, 1.0).astype(np.float32)
    if peak > 0:
        heatmap /= max(float(heatmap.max()), 1e-12)  # bilinear resize can shave the peak off
    return heatmap, int(class_index), float(probs[class_index]), probs


def _conv_and_grads_tf(model, layer_name, x, class_index):
    """(conv map, d score / d conv, probabilities, class) with TensorFlow's GradientTape."""
    import tensorflow as tf

    grad_model = _grad_model(model, layer_name)
    last = model.layers[-1]
    inputs = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        # Watch the input so every op is recorded, even through a frozen (non-trainable) base.
        tape.watch(inputs)
        outputs = grad_model(inputs, training=False)
        conv = outputs[0]
        probs = tf.cast(outputs[-1], tf.float32)
        if class_index is None:
            class_index = int(tf.argmax(probs[0]))
        if len(outputs) == 3:  # the pre-softmax score, as in the Grad-CAM paper
            features = tf.cast(outputs[1], tf.float32)
            logits = tf.matmul(features, tf.cast(last.kernel, tf.float32)) + tf.cast(last.bias, tf.float32)
            score = logits[:, class_index]
        else:
            score = probs[:, class_index]
    grads = tape.gradient(score, conv)
    conv = tf.cast(conv, tf.float32)[0].numpy()
    grads = np.zeros_like(conv) if grads is None else tf.cast(grads, tf.float32)[0].numpy()
    return conv, grads, probs[0].numpy(), int(class_index)


def _conv_and_grads_jax(model, layer_name, x, class_index):
    """The same on JAX: the model cut at the conv layer, `jax.grad` of the part after it
    (only pooling and the dense head follow the last conv map in virion's models)."""
    import jax
    import keras

    conv_tensor = model.get_layer(layer_name).output
    last = model.layers[-1]
    body = keras.Model(model.inputs, conv_tensor)
    head = keras.Model(conv_tensor, [last.input, model.output])
    conv = body(x, training=False)
    _, probs = head(conv, training=False)
    probs = np.asarray(probs, np.float32)[0]
    k = int(np.argmax(probs)) if class_index is None else int(class_index)
    use_logit = isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax

    def score(c):
        features, p = head(c, training=False)
        if use_logit:
            logits = keras.ops.matmul(
                keras.ops.cast(features, "float32"), keras.ops.cast(last.kernel.value, "float32")
            ) + keras.ops.cast(last.bias.value, "float32")
            return logits[0, k]
        return keras.ops.cast(p, "float32")[0, k]

    grads = jax.grad(score)(conv)
    return np.asarray(conv, np.float32)[0], np.asarray(grads, np.float32)[0], probs, k


def gradcam(model, image_uint8_rgb, class_index=None, layer_name=None):
    """Grad-CAM heatmap of `image` for `class_index` (default: the predicted class).

    Returns (heatmap float32 (H, W) in 0..1 at the image's size, class_index, confidence),
    where confidence is the model's probability for that class. The image is resized to
    the model's input size for the forward pass.
    """
    heatmap, index, confidence, _ = gradcam_with_probabilities(model, image_uint8_rgb, class_index, layer_name)
    return heatmap, index, confidence


def overlay(image, heatmap, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """The heatmap in colour (jet by default) blended over the image, as uint8 RGB."""
    from matplotlib import colormaps

    image = _to_rgb_uint8(image)
    heatmap = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    heatmap = _resize(heatmap, *image.shape[:2])
    colored = colormaps[cmap](heatmap)[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colored
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
