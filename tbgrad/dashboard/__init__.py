"""The Gradient-flow dashboard: a TensorBoard plugin for tbgrad's runs."""
