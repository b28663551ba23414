"""The product's hot loops in Cython. Each pure step a loop takes has a
Python statement in fastpath.reference that the unit tests compare it with."""
