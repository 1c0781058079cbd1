"""`new NAME --kind KIND`: a homework package written from templates/<kind>/."""
