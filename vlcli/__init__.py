"""vlcli: parameter-efficient transfer learning for vision-and-language encoder-decoders."""

__version__ = "0.1.0"
