# expect: signature
# a parameter renamed (grad for g)
def update_fn(w, grad, var1, var2, t, d, t_p, b_p, l_p, key):
    update = grad
    return update, var1, var2
