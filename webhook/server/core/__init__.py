"""The admission webhook's pure core: the decision for a pod (annotations, matching, the
patch), the AdmissionReview answer, and `imagecache explain`'s account of it."""
