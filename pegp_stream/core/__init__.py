"""The learning core: the frozen backbone, input preparation, the PET paradigms, the PEGP projection, the
heads, the update and the learner that holds them. Tensors in, tensors out: no Kafka, no HTTP, no files but
weights."""
