"""The texture model: classical rotation-invariant texture features + an SVM, saved without pickle."""
