"""Knowledge distillation: a teacher found at a path and checked against its student, the loss terms, the top-k
logit cache beside the token shards, and a student that starts from every k-th teacher layer.

The objectives that use these (distill_lm, distill_classification) live with the others in slmkit/objectives/.
"""
