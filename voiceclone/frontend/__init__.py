"""The front end: text to token ids, and prompt recordings to the features the LM and the flow condition on."""
