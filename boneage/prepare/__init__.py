"""Stage 2, preparing the image: is the film a left hand (the film check and the verdict), the hand mask
(segmenters), and the stages that make the model's input (``stages.preprocess``)."""
