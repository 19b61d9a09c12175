"""space/autodeeplab"""
